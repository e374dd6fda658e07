"""services.platform.amqp_layer on real RabbitMQ (a vhost per test): the
Link's confirms, mandatory returns and reconnects, and the ConsumeLoop's
consuming, reconnecting and stopping."""
import json
import socket
from urllib.parse import unquote, urlsplit

import amqp
import eventlet
import pytest
from amqp.exceptions import ChannelError
from kombu import Exchange, Queue

from harness.process import wait_until
from harness.rabbit import rabbitmqctl
from services.platform import amqp_layer
from services.platform.amqp_layer import ConsumeLoop, Link

EXCHANGE = Exchange("layer.test", type="topic", durable=True, auto_delete=False)
QUEUE = Queue("layer-q", exchange=EXCHANGE, routing_key="ok", durable=True,
              auto_delete=False)


def taken(amqp_uri, queue="layer-q"):
    """(body, delivery_mode) of every message in ``queue``, taken."""
    with amqp_layer.connect(amqp_uri) as connection:
        channel = connection.channel()
        messages = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            messages.append((json.loads(message.body),
                             message.properties.get("delivery_mode")))
        return messages


def test_a_confirmed_link_declares_on_connect_and_publishes_persistent(rabbit_config):
    amqp_uri = rabbit_config["AMQP_URI"]
    link = Link(rabbit_config, declare=(EXCHANGE, QUEUE), confirms=True)
    with link.lock:
        link.publish({"n": 1}, exchange=EXCHANGE, routing_key="ok", timeout=5,
                     delivery_mode=2, mandatory=True)
    link.reset()
    assert taken(amqp_uri) == [({"n": 1}, 2)]


def test_an_unroutable_mandatory_message_is_refused_or_handed_to_on_return(rabbit_config):
    # no on_return (the gateway): the return is raised, the link closed
    link = Link(rabbit_config, declare=(EXCHANGE,), confirms=True)
    with link.lock, pytest.raises(ChannelError, match="NO_ROUTE"):
        link.publish({"n": 1}, exchange=EXCHANGE, routing_key="nowhere",
                     timeout=5, mandatory=True)
    assert link.producer is None
    # with on_return (the dead-letter replay): told before the confirm
    returns = []
    link = Link(rabbit_config, declare=(EXCHANGE,), confirms=True,
                on_return=lambda exc, exchange, key, message: returns.append(
                    (str(exc), exchange, key)))
    with link.lock:
        link.publish({"n": 2}, exchange=EXCHANGE, routing_key="nowhere",
                     timeout=5, mandatory=True)
    link.reset()
    assert returns == [("Basic.return: (312) NO_ROUTE", "layer.test", "nowhere")]


def test_a_link_whose_connection_died_reconnects_on_next_use(rabbit_config):
    amqp_uri = rabbit_config["AMQP_URI"]
    link = Link(rabbit_config, declare=(EXCHANGE, QUEUE), confirms=True)
    with link.lock:
        link.publish({"n": 1}, exchange=EXCHANGE, routing_key="ok", timeout=5)
        link.connection.connection.sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(amqp.Connection.connection_errors):
            link.publish({"n": 2}, exchange=EXCHANGE, routing_key="ok", timeout=5)
        assert link.producer is None
        link.publish({"n": 3}, exchange=EXCHANGE, routing_key="ok", timeout=5)
    link.reset()
    assert [body for body, _ in taken(amqp_uri)] == [{"n": 1}, {"n": 3}]


def test_a_link_that_pauses_after_a_failure_fails_fast_meanwhile(rabbit_config):
    link = Link(rabbit_config, declare=(EXCHANGE, QUEUE), reconnect_pause=60,
                pause_after_failure=True)
    with link.lock:
        link.publish({"n": 1}, exchange=EXCHANGE, routing_key="ok", timeout=5)
        link.connection.connection.sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(amqp.Connection.connection_errors):
            link.publish({"n": 2}, exchange=EXCHANGE, routing_key="ok", timeout=5)
        with pytest.raises(ConnectionError, match="^broker unreachable a moment ago$"):
            link.publish({"n": 3}, exchange=EXCHANGE, routing_key="ok", timeout=5)


def test_the_consume_loop_consumes_again_after_a_lost_connection_and_stops(rabbit_config):
    amqp_uri = rabbit_config["AMQP_URI"]
    queue = Queue("layer-loop", durable=False, exclusive=True, auto_delete=True)
    got, starts = [], []
    loop = ConsumeLoop(rabbit_config, queue, lambda body, message: got.append(body),
                       heartbeat=0, label="layer-loop", what="test consumer",
                       on_consuming=lambda: starts.append(1))
    thread = loop.start(eventlet.spawn)

    def send(n):
        link = Link(amqp_uri)
        with link.lock:
            link.publish({"n": n}, exchange="", routing_key="layer-loop", timeout=5)
        link.reset()

    wait_until(lambda: loop.consuming, 10, "the loop to consume")
    send(1)
    wait_until(lambda: got == [{"n": 1}], 10, "the first message")
    # the broker closes the loop's connection: it connects and consumes anew
    vhost = unquote(urlsplit(amqp_uri).path[1:])
    rabbitmqctl("close_all_connections", "-p", vhost, "test: connection closed")
    wait_until(lambda: len(starts) == 2 and loop.consuming, 15, "consuming anew")
    send(2)
    wait_until(lambda: got == [{"n": 1}, {"n": 2}], 10, "the second message")
    loop.stop()
    with eventlet.Timeout(5):
        thread.wait()
    assert not loop.consuming
