"""A Link with pause_after_failure (the votes service's counts feed) waits
``reconnect_pause`` after a failed publish, then connects again, even when
publishes keep coming during the pause: a publish refused because of the
pause is not a failure that starts the pause anew. Real RabbitMQ."""
import time

import pytest
from kombu import Exchange

from services.platform.amqp_layer import Link

PAUSE = 0.5
EVERY = 0.1      # seconds between two publishes: more often than PAUSE
PATIENCE = 5.0   # a bound for the test, well above PAUSE

EXCHANGE = Exchange("link-pause", type="topic", durable=False, auto_delete=False)


def test_publishes_during_the_pause_do_not_extend_it(rabbit_config):
    # confirms: so that a publish to a missing exchange fails at once
    link = Link(rabbit_config["AMQP_URI"], declare=(EXCHANGE,), confirms=True,
                reconnect_pause=PAUSE, pause_after_failure=True)

    def publish(exchange):
        with link.lock:
            link.publish({"n": 1}, exchange=exchange, routing_key="x", timeout=2,
                         delivery_mode=1)

    publish(EXCHANGE.name)  # connected
    with pytest.raises(Exception, match="NOT_FOUND"):  # a real failed publish
        publish("no-such-exchange")
    failed = time.monotonic()
    outcomes = []
    while time.monotonic() - failed < PATIENCE:
        try:
            publish(EXCHANGE.name)
            outcomes.append("published")
            break
        except ConnectionError as exc:
            outcomes.append(str(exc))
        time.sleep(EVERY)
    link.reset()
    assert outcomes[-1] == "published", outcomes
    assert set(outcomes[:-1]) <= {"broker unreachable a moment ago"}, outcomes
    assert time.monotonic() - failed < PAUSE + 1.0, outcomes
