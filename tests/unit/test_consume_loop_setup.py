"""A consume loop whose set-up the broker leaves unanswered (a declare or a
consume on a broker that has just lost a node) gives up after
SETUP_TIMEOUT and connects anew, instead of waiting for ever."""
import time

import eventlet

from services.platform import amqp_layer


class FakeConnection:
    def __init__(self, made, loop, hang):
        self.made, self.loop, self.hang = made, loop, hang
        self.closed = False
        made.append(self)

    def channel(self):
        if self.hang:
            eventlet.sleep(60)  # the broker never answers
        self.loop.stop()
        raise ConnectionError("second try: stop here")

    def release(self):
        self.closed = True

    close = release


def test_a_set_up_the_broker_never_answers_is_given_up_and_tried_anew(monkeypatch):
    made = []
    loop = amqp_layer.ConsumeLoop("amqp://guest:guest@127.0.0.1:1//", queue=None,
                                  on_message=None, heartbeat=0, label="test",
                                  what="test queue")
    monkeypatch.setattr(amqp_layer, "SETUP_TIMEOUT", 0.3)
    monkeypatch.setattr(amqp_layer, "CONSUME_RETRY", 0.01)
    monkeypatch.setattr(loop, "_connect", lambda conn: None)
    monkeypatch.setattr(amqp_layer, "connection", lambda target, **kwargs: FakeConnection(
        made, loop, hang=not made))
    loop.running = True
    started = time.monotonic()
    with eventlet.Timeout(5):
        loop.run()
    took = time.monotonic() - started
    assert len(made) == 2
    assert made[0].closed
    assert 0.3 <= took < 5
