"""A bound on how long a service takes to stop, leaner workers, and
fewer garbage collections.

Selected with nameko's own hook: ``SERVICE_CONTAINER_CLS:
services.platform.container.DeadlineContainer`` in config.yml (nameko's
``get_container_cls`` reads it for ``nameko run``, ServiceRunner and
``container_factory``).
"""
import gc
import logging
import sys
import time

import eventlet
from nameko import containers
from nameko.containers import ServiceContainer
from nameko.extensions import DependencyProvider
from nameko.log_helpers import make_timing_logger
from nameko.utils.concurrency import SpawningSet

from services import __version__
from services.settings import settings_of

_log = logging.getLogger(__name__)
_log_time = make_timing_logger(_log)
_worker_log = containers._log  # "nameko.containers": the filter and tests expect it
HOOKS = ("worker_setup", "worker_result", "worker_teardown")

STOP_DEADLINE = 8.0  # seconds; SIGTERM must end a service within 10
GC_OLDER = (50, 100)  # Python's are 10 and 10


def tune_gc(gen0):
    """Python collects its youngest objects every 700 allocations, and all
    of them every 100 such collections: at a few thousand requests a
    second, hundreds of collections a second, and full ones of 30-40 ms
    in the gateway, which made its p99. GC_GEN0_THRESHOLD (0: Python's
    defaults) sets the first threshold, and the older ones go to 50 and
    100. Process-wide, like the collector."""
    if gen0:
        gc.set_threshold(gen0, *GC_OLDER)


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
    a backlog) before the Redis client the worker needs was made.

    Its workers run as upstream's do, less what costs without effect: the
    worker hooks of providers that do not override them (nameko calls the
    no-op base methods), and, unless nameko's log is at DEBUG, four timing
    context managers and five debug lines per worker (one of which made a
    uuid4 call id). At DEBUG, upstream's own ``_run_worker`` runs."""

    stop_deadline = STOP_DEADLINE

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # hook name -> the providers that override it, from the first worker
        # on (tests may replace dependencies until then)
        self._hooked_providers = None

    def start(self):
        # every setting checked (and credentials read from their files)
        # before any extension reads one
        tune_gc(settings_of(self).gc_gen0_threshold)
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

    def _run_worker(self, worker_ctx, handle_result):
        if _worker_log.isEnabledFor(logging.DEBUG):
            return super()._run_worker(worker_ctx, handle_result)
        # upstream's steps, each still a method (nameko's test helpers wrap
        # _worker_result and _worker_teardown)
        self._inject_dependencies(worker_ctx)
        self._worker_setup(worker_ctx)
        result = exc_info = None
        method = getattr(worker_ctx.service, worker_ctx.entrypoint.method_name)
        try:
            result = method(*worker_ctx.args, **worker_ctx.kwargs)
        except Exception as exc:
            if isinstance(exc, worker_ctx.entrypoint.expected_exceptions):
                _worker_log.warning('(expected) error handling worker %s: %s',
                                    worker_ctx, exc, exc_info=True)
            else:
                _worker_log.exception('error handling worker %s: %s', worker_ctx, exc)
            exc_info = sys.exc_info()
        if handle_result is not None:
            result, exc_info = handle_result(worker_ctx, result, exc_info)
        self._worker_result(worker_ctx, result, exc_info)
        del exc_info  # as upstream: no cycle through the traceback
        self._worker_teardown(worker_ctx)

    def _worker_setup(self, worker_ctx):
        for provider in self._hooked()["worker_setup"]:
            provider.worker_setup(worker_ctx)

    def _worker_result(self, worker_ctx, result, exc_info):
        _worker_log.debug('signalling result for %s', worker_ctx)
        for provider in self._hooked()["worker_result"]:
            provider.worker_result(worker_ctx, result, exc_info)

    def _worker_teardown(self, worker_ctx):
        for provider in self._hooked()["worker_teardown"]:
            provider.worker_teardown(worker_ctx)

    def _hooked(self):
        if self._hooked_providers is None:
            self._hooked_providers = {hook: [
                provider for provider in self.dependencies
                if getattr(type(provider), hook) is not getattr(DependencyProvider, hook)]
                for hook in HOOKS}
        return self._hooked_providers

    def _stop_overdue(self):
        if not self._died.ready():
            _log.warning("%s did not stop within %ss: killing it",
                         self.service_name, self.stop_deadline)
            self.kill()


# What a service waits for. A container starts, and answers /health, while
# RabbitMQ or Redis cannot be reached: its extensions keep trying, and say
# here what they wait for (the servers' names below, as /health shows them)
RABBITMQ = "rabbitmq"
REDIS = "redis"
SERVER_NAMES = {RABBITMQ: "RabbitMQ", REDIS: "Redis"}
WAIT_LOG_INTERVAL = 30.0  # seconds between two log lines of one wait


def _waits(container):
    """(server, who) -> (since, error text, logged at) of the container."""
    waits = getattr(container, "server_waits", None)
    if waits is None:
        waits = container.server_waits = {}
    return waits


def waiting_for(container, server, who, address, error):
    """``who`` (an extension's name) cannot reach ``server`` at ``address``
    (credentials redacted) for ``error``: logged when the wait begins, when
    its error changes, and every WAIT_LOG_INTERVAL seconds."""
    waits = _waits(container)
    now = time.monotonic()
    text = str(error) or type(error).__name__
    began, last_text, logged = waits.get((server, who), (now, None, None))
    if text != last_text or now - logged >= WAIT_LOG_INTERVAL:
        logged = now
        _log.warning("waiting for %s at %s: %s", SERVER_NAMES.get(server, server),
                     address, text)
    waits[(server, who)] = (began, text, logged)


def done_waiting(container, server, who, address):
    """``who`` reached ``server``: logged if it had been waiting."""
    entry = _waits(container).pop((server, who), None)
    if entry is not None:
        _log.info("%s at %s reached after %.1fs", SERVER_NAMES.get(server, server),
                  address, time.monotonic() - entry[0])


def servers_awaited(container):
    """The servers the container's extensions wait for, sorted."""
    return sorted({server for server, _ in _waits(container)})


def health(container):
    """The body of a /health answer: {"status": "ok"}, or {"status":
    "waiting", "waiting_for": [server, ...]}, each with the "version". Always a 200: /health is the
    liveness probe, and a process that waits for a server is alive (a
    restart would not bring the server back); /ready tells readiness."""
    waiting = servers_awaited(container)
    if waiting:
        return {"status": "waiting", "waiting_for": waiting, "version": __version__}
    return {"status": "ok", "version": __version__}


class Waiting(DependencyProvider):
    """Injects ``health()`` of the container (above)."""

    def get_dependency(self, worker_ctx):
        return lambda: health(self.container)
