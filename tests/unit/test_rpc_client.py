"""RpcClient with a fake broker (no RabbitMQ): timeouts, replies routed by
correlation id, grouped calls."""
import time
from unittest import mock

import eventlet
import pytest

from services import contracts
from services.platform.rpc_client import RpcClient


class Unavailable(Exception):
    pass


class Client(RpcClient):
    target_service = "tally"
    timeout_setting = "read_timeout"
    group_method = "get_many"
    max_group = 3
    unavailable = Unavailable


class FakeBroker:
    """Takes the client's requests; ``answer`` decides each reply (None:
    no reply), sent after ``delay`` seconds."""

    def __init__(self, client, answer=None, delay=0.0):
        self.client = client
        self.answer = answer or (lambda method, args: {"result": [method, args],
                                                       "error": None})
        self.delay = delay
        self.requests = []

    def request(self, method, args, correlation_id, timeout):
        self.requests.append((method, args, correlation_id, timeout))
        body = self.answer(method, args)
        if body is not None:
            eventlet.spawn_after(self.delay, self.reply, correlation_id, body)

    def reply(self, correlation_id, body):
        self.client._on_reply(body, mock.Mock(properties={"correlation_id": correlation_id}))


@pytest.fixture
def client(mock_container):
    mock_container.config.update({"AMQP_URI": "memory://", "READ_TIMEOUT": 0.5})
    mock_container.service_name = "gateway"
    provider = Client().bind(mock_container, "tally_rpc")
    provider.setup()
    provider.listening = True  # as if the reply consumer were up
    return provider


def broker(client, **kwargs):
    fake = FakeBroker(client, **kwargs)
    client._request = fake.request
    return fake


def test_setup(client):
    assert client.timeout == 0.5
    assert client.reply_queue_name.startswith("rpc.reply-gateway-")
    assert client.exchange.name == contracts.RPC_EXCHANGE
    assert client.group.max_wait == pytest.approx(0.2)
    assert client.group.deadline == 0.5


def test_a_call_gets_its_result(client):
    fake = broker(client)
    assert client.call("top", 5) == ["top", (5,)]
    ((method, args, _, timeout),) = fake.requests
    assert (method, args, timeout) == ("top", (5,), 0.5)
    assert client.replies == {}


def test_replies_are_routed_by_correlation_id(client):
    # the broker answers the second call first
    fake = broker(client, answer=lambda method, args: None)
    pool = eventlet.GreenPool()
    calls = [pool.spawn(client.call, "top", n) for n in (1, 2)]
    eventlet.sleep(0.01)
    (_, _, first, _), (_, _, second, _) = fake.requests
    fake.reply(second, {"result": "two", "error": None})
    fake.reply(first, {"result": "one", "error": None})
    assert [call.wait() for call in calls] == ["one", "two"]


def test_a_reply_for_an_unknown_id_is_ignored(client):
    fake = broker(client, answer=lambda method, args: None)
    call = eventlet.spawn(client.call, "top", 1)
    eventlet.sleep(0.01)
    fake.reply("not-ours", {"result": "stray", "error": None})
    client._on_reply({"result": "no id"}, mock.Mock(properties={}))
    (_, _, correlation_id, _), = fake.requests
    fake.reply(correlation_id, {"result": "mine", "error": None})
    assert call.wait() == "mine"


def test_no_reply_times_out(client):
    broker(client, answer=lambda method, args: None)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="^the tally service did not answer in time$"):
        client.call("top", 1)
    assert 0.45 <= time.monotonic() - started < 1.0
    assert client.replies == {}


def test_a_late_reply_after_the_timeout_is_ignored(client):
    fake = broker(client, delay=0.3)
    with pytest.raises(Unavailable):
        client.call("top", 1, timeout=0.1)
    eventlet.sleep(0.3)  # the reply arrives now, for nobody
    assert client.replies == {}
    assert len(fake.requests) == 1


def test_an_error_reply_is_unavailable(client):
    broker(client, answer=lambda method, args: {"result": None, "error": {
        "exc_type": "StoreUnavailable", "value": "redis down"}})
    with pytest.raises(Unavailable, match="^the tally service could not answer$"):
        client.call("top", 1)


def test_a_call_waits_for_the_reply_listener_within_its_timeout(client):
    client.listening = False
    fake = broker(client)
    with pytest.raises(Unavailable, match="did not answer in time"):
        client.call("top", 1, timeout=0.2)
    assert fake.requests == []  # no request whose reply nobody would read


def test_no_connection_is_unavailable_and_resets_the_link(client):
    # the client's amqp_layer.Link, its connect refused
    client.link.get_producer = mock.Mock(side_effect=ConnectionRefusedError())
    client.link.reset = mock.Mock()
    with pytest.raises(Unavailable, match="^no connection to RabbitMQ$"):
        client.call("top", 1)
    client.link.reset.assert_called_once_with(failed=False)


def test_the_request_follows_nameko_rpc(client):
    producer = mock.MagicMock()
    client.link.get_producer = lambda: producer
    with pytest.raises(Unavailable):
        client.call("top", 5, timeout=0.05)
    (body,), kwargs = producer.publish.call_args
    assert body == {"args": (5,), "kwargs": {}}
    assert kwargs["routing_key"] == "tally.top"
    assert kwargs["reply_to"] == client.reply_queue_name
    assert kwargs["correlation_id"]
    assert kwargs["expiration"] == 0.05  # nobody took it in time: dropped
    # as nameko's RpcProxy: neither persistent nor mandatory, no confirm
    assert (kwargs["delivery_mode"], kwargs["mandatory"], kwargs["confirm_timeout"]) == (
        1, False, None)


def test_grouped_calls_share_one_request(client):
    fake = broker(client, answer=lambda method, args: {
        "result": ["r-{}".format(item) for item in args[0]], "error": None},
        delay=0.05)
    runner = eventlet.spawn(client.group.run)
    first = eventlet.spawn(client.call_grouped, "a")
    eventlet.sleep(0.01)  # "a" in flight; the next three gather
    pool = eventlet.GreenPool()
    with eventlet.Timeout(2):
        rest = list(pool.imap(client.call_grouped, ["b", "c", "d", "e"]))
        assert first.wait() == "r-a"
    runner.kill()
    assert rest == ["r-b", "r-c", "r-d", "r-e"]
    assert [(method, args[0]) for method, args, _, _ in fake.requests] == [
        ("get_many", ["a"]), ("get_many", ["b", "c", "d"]), ("get_many", ["e"])]
    # a grouped call has the share of the bound left after queueing
    assert all(timeout == pytest.approx(0.3) for _, _, _, timeout in fake.requests)


def test_a_grouped_call_nobody_answers_is_unavailable_in_time(client):
    broker(client, answer=lambda method, args: None)
    runner = eventlet.spawn(client.group.run)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="^the tally service did not answer in time$"):
        client.call_grouped("a")
    runner.kill()
    assert time.monotonic() - started < 0.6
