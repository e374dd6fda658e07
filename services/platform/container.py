"""A bound on how long a service takes to stop.

Selected with nameko's own hook: ``SERVICE_CONTAINER_CLS:
services.platform.container.DeadlineContainer`` in config.yml (nameko's
``get_container_cls`` reads it for ``nameko run``, ServiceRunner and
``container_factory``).
"""
import logging

import eventlet
from nameko.containers import ServiceContainer
from nameko.log_helpers import make_timing_logger
from nameko.utils.concurrency import SpawningSet

_log = logging.getLogger(__name__)
_log_time = make_timing_logger(_log)

STOP_DEADLINE = 8.0  # seconds; SIGTERM must end a service within 10


class DeadlineContainer(ServiceContainer):
    """nameko's container, whose ``stop`` is cut short: upstream's graceful
    stop waits for every AMQP consumer to be cancelled by its consume loop;
    while the broker is down that loop is busy reconnecting, and the stop
    can wait for ever. A stop that outlasts ``stop_deadline`` kills the
    container instead: unacked messages go back to their queue, where the
    exactly-once marks make a second delivery harmless.

    The order of upstream's stop is kept: entrypoints first (the HTTP
    server drains there), then workers, then dependencies.

    And it starts its dependencies before its entrypoints: upstream starts
    them all at once, so a consumer could hand a worker a message (one of
    a backlog) before the Redis client the worker needs was made."""

    stop_deadline = STOP_DEADLINE

    def start(self):
        _log.debug("starting %s", self)
        self.started = True
        with _log_time("started %s", self):
            self.extensions.all.setup()
            self.dependencies.all.start()
            SpawningSet(self.entrypoints | self.subextensions).all.start()

    def stop(self):
        timer = eventlet.spawn_after(self.stop_deadline, self._stop_overdue)
        try:
            super().stop()
        finally:
            timer.cancel()

    def _stop_overdue(self):
        if not self._died.ready():
            _log.warning("%s did not stop within %ss: killing it",
                         self.service_name, self.stop_deadline)
            self.kill()
