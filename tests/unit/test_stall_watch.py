"""ResilientQueueConsumer (the RPC consumer), DeadLetteringQueueConsumer
(the events'), RpcClient's reply listener and the gateway's live counts
replace a consumer the broker stopped serving (the last two through one
loop, amqp_layer.ConsumeLoop): after STALL_AFTER seconds
with room for more and no delivery, each asks the broker on the
consumer's channel how many messages are ready, and consumes anew (a
connection error for its loop) if some are or no answer comes. The fault
tests show it against a real broker (test_*_the_broker_stops_serving);
here, each rule alone."""
import logging
import socket
from types import SimpleNamespace
from unittest import mock

import amqp
import eventlet
import pytest
from amqp.protocol import queue_declare_ok_t
from prometheus_client import REGISTRY

from services.gateway.live import LiveCounts
from services.platform import brokers, consumers
from services.platform.brokers import STALL_AFTER
from services.platform.consumers import (
    DeadLetteringQueueConsumer,
    ResilientQueueConsumer,
)
from services.platform.rpc_client import RpcClient

QUEUE = "evt-gateway-vote_cast--votes.handle_vote_cast"
PREFETCH = 3


class FakeChannel:
    """Answers a passive declare with ``ready`` messages, or never."""

    def __init__(self, ready=0, answer=True):
        self.ready = ready
        self.answer = answer
        self.declared = []
        self.sock, self.peer = socket.socketpair()
        self.connection = SimpleNamespace(sock=self.sock)

    def queue_declare(self, queue, passive=False):
        self.declared.append((queue, passive))
        if not self.answer:
            eventlet.sleep(60)
        return queue_declare_ok_t(queue, self.ready, 1)

    def close(self):
        self.sock.close()
        self.peer.close()


def quiet(seconds):
    """A brokers.Quiet whose last delivery was ``seconds`` ago."""
    watch = brokers.Quiet()
    watch.since = consumers.time.monotonic() - seconds
    return watch


class Provider:
    queue = SimpleNamespace(name=QUEUE)


@pytest.fixture(params=[DeadLetteringQueueConsumer, ResilientQueueConsumer])
def make(request):
    def make(ready=0, answer=True, quiet_for=STALL_AFTER, in_flight=0):
        consumer = request.param()
        consumer.container = SimpleNamespace(max_workers=PREFETCH)
        provider = Provider()
        channel = FakeChannel(ready, answer)
        request.addfinalizer(channel.close)
        consumer._providers = {provider}
        consumer._consumers = {provider: object()}  # on_iteration stops with none
        consumer._channel = channel
        consumer.held = [mock.Mock(channel=channel, delivery_tag=tag)
                         for tag in range(1, in_flight + 1)]
        for message in consumer.held:
            consumer._delivered(provider, message)
        consumer._quiet_since = {provider: consumers.time.monotonic() - quiet_for}
        return consumer, channel
    return make


def test_a_quiet_queue_with_nothing_ready_is_left_alone(make):
    consumer, channel = make(ready=0)
    consumer.on_iteration()
    consumer._next_check = 0  # STALL_CHECK_INTERVAL later
    consumer.on_iteration()  # asked once per STALL_AFTER, not every turn
    assert channel.declared == [(QUEUE, True)]
    assert channel.sock.send(b"x") == 1  # the connection is kept


def test_no_question_before_stall_after(make):
    consumer, channel = make(ready=5, quiet_for=STALL_AFTER - 1)
    consumer.on_iteration()
    assert channel.declared == []


def test_no_question_while_every_prefetch_slot_is_taken(make):
    consumer, channel = make(ready=5, in_flight=PREFETCH)
    consumer.on_iteration()
    assert channel.declared == []


def stalls(reason):
    return REGISTRY.get_sample_value(
        "amqp_consumer_stalls_total", {"queue": QUEUE, "reason": reason}) or 0


def test_ready_messages_and_no_delivery_mean_consume_anew(make, caplog):
    consumer, channel = make(ready=5, in_flight=PREFETCH - 1)
    stalls_before = stalls("ready")
    with caplog.at_level(logging.WARNING, logger=brokers.__name__):
        with pytest.raises(amqp.exceptions.ConnectionForced):
            consumer.on_iteration()
    assert caplog.messages == [
        "the broker stopped serving the consumer of {} (5 messages ready and "
        "none delivered for {}s): consuming anew".format(QUEUE, STALL_AFTER)]
    # the socket is shut down: no close handshake on a stalled connection
    assert channel.peer.recv(1) == b""
    assert consumer._channel is None
    assert stalls("ready") == stalls_before + 1


def test_no_answer_means_consume_anew(make, caplog, monkeypatch):
    monkeypatch.setattr(consumers, "STALL_ANSWER_TIMEOUT", 0.05)
    consumer, channel = make(answer=False)
    stalls_before = stalls("no_answer")
    with caplog.at_level(logging.WARNING, logger=brokers.__name__):
        with pytest.raises(amqp.exceptions.ConnectionForced) as raised:
            consumer.on_iteration()
    assert stalls("no_answer") == stalls_before + 1
    assert str(raised.value) == (
        "consumer not served: no answer on the consumer's channel within 0.05s")
    assert len(caplog.messages) == 1 and "within 0.05s" in caplog.messages[0]


def test_a_delivery_restarts_the_quiet_time(make):
    consumer, channel = make(ready=5)
    provider, = consumer._providers
    message = mock.Mock(channel=channel, delivery_tag=1)
    consumer._delivered(provider, message)
    consumer.on_iteration()
    assert channel.declared == []
    assert consumer._in_flight() == 1


def test_an_ack_makes_room_again(make):
    consumer, channel = make(ready=5, in_flight=PREFETCH)
    consumer.on_iteration()
    assert channel.declared == []
    consumer._next_check = 0  # STALL_CHECK_INTERVAL later
    consumer.ack_message(consumer.held[1])
    consumer.held[1].ack.assert_called_once_with()
    assert consumer._in_flight() == PREFETCH - 1
    with pytest.raises(amqp.exceptions.ConnectionForced):
        consumer.on_iteration()


def test_a_stopping_consumer_asks_nothing(make):
    consumer, channel = make(ready=5)
    consumer.should_stop = True
    consumer.on_iteration()
    assert channel.declared == []


class Replies(RpcClient):
    target_service = "votes"


@pytest.fixture
def replies(request):
    def make(ready, waiting=1, quiet_for=STALL_AFTER):
        client = Replies()
        client.container = SimpleNamespace(service_name="gateway")
        client.broker, client.heartbeat, client.exchange = "memory://", 0, None
        client.reply_queue_name = "rpc.reply-gateway-1"
        client.replies = {str(n): eventlet.event.Event() for n in range(waiting)}
        loop = client.reply_loop()
        loop.quiet = quiet(quiet_for)
        channel = FakeChannel(ready)
        request.addfinalizer(channel.close)
        return loop, channel
    return make


def test_replies_that_stop_coming_while_calls_wait_mean_listen_anew(replies):
    loop, channel = replies(ready=2)
    with pytest.raises(ConnectionError) as raised:
        loop.check_served(channel)
    assert str(raised.value) == ("reply consumer not served: 2 messages ready "
                                 "and none delivered for {}s".format(STALL_AFTER))
    assert channel.declared == [("rpc.reply-gateway-1", True)]
    assert REGISTRY.get_sample_value("amqp_consumer_stalls_total", {
        "queue": "rpc.reply-gateway", "reason": "ready"}) >= 1


def test_the_reply_queue_is_asked_only_while_calls_wait_and_replies_stop(replies):
    for ready, waiting, quiet_for in ((2, 0, STALL_AFTER), (2, 1, STALL_AFTER - 1)):
        loop, channel = replies(ready, waiting, quiet_for)
        loop.check_served(channel)
        assert channel.declared == []
    loop, channel = replies(ready=0)
    loop.check_served(channel)
    loop.check_served(channel)  # once per STALL_AFTER
    assert channel.declared == [("rpc.reply-gateway-1", True)]


def test_a_delivery_restarts_the_reply_listener_quiet_time(replies):
    loop, channel = replies(ready=2)
    loop._delivered({"result": 1}, mock.Mock(properties={"correlation_id": "x"}))
    loop.check_served(channel)
    assert channel.declared == []


def test_live_counts_ask_after_stall_after_without_an_announcement(request):
    live = LiveCounts()
    live.broker, live.heartbeat = "memory://", 0
    live.queue = SimpleNamespace(name="evt-votes-counts_changed--gateway.live_counts-1")
    loop = live.feed_loop()
    quiet_channel, ready = FakeChannel(ready=0), FakeChannel(ready=4)
    request.addfinalizer(quiet_channel.close)
    request.addfinalizer(ready.close)
    loop.quiet = quiet(STALL_AFTER - 1)
    loop.check_served(ready)
    assert ready.declared == []
    loop.quiet = quiet(STALL_AFTER)
    loop.check_served(quiet_channel)
    assert quiet_channel.declared == [(live.queue.name, True)]
    loop.quiet = quiet(STALL_AFTER)
    with pytest.raises(ConnectionError) as raised:
        loop.check_served(ready)
    assert str(raised.value) == ("live counts consumer not served: 4 messages "
                                 "ready and none delivered for {}s".format(STALL_AFTER))
