"""A bound on how long a service takes to stop.

Nameko's graceful stop waits for every AMQP consumer to be cancelled by its
consume loop; while the broker is down that loop is busy reconnecting, and
the stop can wait for ever. Past the deadline the container is killed
instead: unacked messages go back to their queue, where the exactly-once
marks make a second delivery harmless.
"""
import logging

import eventlet

_log = logging.getLogger(__name__)

STOP_DEADLINE = 8.0  # seconds; SIGTERM must end a service within 10


def arm_stop_deadline(container, seconds=STOP_DEADLINE):
    """Call when the container starts stopping; idempotent per container."""
    if getattr(container, "_stop_deadline", None) is not None:
        return

    def expire():
        eventlet.sleep(seconds)
        if not container._died.ready():
            _log.warning("%s did not stop within %ss: killing it",
                         container.service_name, seconds)
            container.kill()

    container._stop_deadline = eventlet.spawn(expire)
