"""Malformed RPC requests sent straight to the votes service's queue, as any
client of the broker can: none may end the process, and a vote among them
counts at most once however often it is delivered."""
import json
import uuid

import pytest
from kombu import Connection, Exchange, Producer, Queue

from harness.process import wait_until
from services import contracts

RPC_EXCHANGE = Exchange(contracts.RPC_EXCHANGE, type="topic", durable=True)
VOTE_KEY = contracts.rpc_routing_key(contracts.RPC_VOTE)
RPC_DEAD_LETTERS = contracts.RPC_QUEUE + ".dead-letter"
REASON = "x-dead-letter-reason"


class Client:
    """A raw AMQP client of the votes service: requests published as given,
    replies taken from a queue of its own."""

    def __init__(self, amqp_uri):
        self.connection = Connection(amqp_uri)
        channel = self.connection.channel()
        self.reply_to = "test-replies-" + uuid.uuid4().hex
        self.replies = Queue(self.reply_to, exchange=RPC_EXCHANGE,
                             routing_key=self.reply_to, exclusive=True,
                             channel=channel)
        self.replies.declare()
        self.producer = Producer(channel)

    def close(self):
        self.connection.close()

    def publish(self, body, times=1, routing_key=VOTE_KEY,
                content_type="application/json", **properties):
        """``body``: bytes as they are, or a value sent as JSON."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        for _ in range(times):
            self.producer.publish(
                body, exchange=RPC_EXCHANGE, routing_key=routing_key,
                content_type=content_type, content_encoding="utf-8",
                declare=[RPC_EXCHANGE], **properties)

    def take_replies(self, count, timeout=20):
        """{correlation id: [reply body, ...]} of ``count`` replies."""
        taken = []

        def got_all():
            message = self.replies.get(no_ack=True)
            if message is not None:
                taken.append(message)
            return len(taken) >= count
        wait_until(got_all, timeout, "{} RPC replies (have {})".format(
            count, len(taken)), interval=0.02)
        replies = {}
        for message in taken:
            replies.setdefault(message.properties.get("correlation_id"), []).append(
                json.loads(message.body))
        return replies


@pytest.fixture
def client(cluster):
    client = Client(cluster.amqp_uri)
    yield client
    client.close()


def dead_letters(amqp_uri, count, timeout=20):
    """[(routing key, reason, body)] of ``count`` messages taken off the
    RPC dead-letter queue."""
    taken = []
    with Connection(amqp_uri) as connection:
        channel = connection.channel()

        def got_all():
            message = channel.basic_get(RPC_DEAD_LETTERS, no_ack=True)
            if message is not None:
                taken.append(message)
            return len(taken) >= count
        wait_until(got_all, timeout, "{} RPC dead letters (have {})".format(
            count, len(taken)), interval=0.02)
        assert channel.basic_get(RPC_DEAD_LETTERS, no_ack=True) is None
    return sorted((message.headers["x-original-routing-key"],
                   message.headers[REASON].split(":")[0],
                   message.body if isinstance(message.body, bytes)
                   else message.body.encode())
                  for message in taken)


def vote(post_id, score=1):
    return {"args": [post_id, score], "kwargs": {}}


def error_of(reply):
    assert reply["result"] is None
    return reply["error"]["exc_type"]


def test_malformed_rpc_requests_are_refused_and_the_service_serves_on(
        cluster, client):
    votes = cluster.start_votes()
    # three deliveries each, as a broker redelivers a request whose process
    # died before it acked (upstream's first one ended the process)
    client.publish(vote("no-reply"), times=3, correlation_id="c-no-reply")
    client.publish(vote("no-correlation"), times=3, reply_to=client.reply_to)
    client.publish(b'{"args": ["bad-json", 1', reply_to=client.reply_to,
                   correlation_id="c-bad-json")
    client.publish(b"\x80\x04pickle", content_type="application/x-python-serialize",
                   reply_to=client.reply_to, correlation_id="c-pickle")
    client.publish(b'{"args": ', correlation_id="c-bad-json-no-reply")
    client.publish(["no-args"], reply_to=client.reply_to, correlation_id="c-list")
    client.publish({"args": ["p", 1], "kwargs": {"weight": 9}},
                   reply_to=client.reply_to, correlation_id="c-signature")
    client.publish(vote("unknown-method"), routing_key="votes.no_such_method",
                   reply_to=client.reply_to, correlation_id="c-method")
    # a good vote, delivered three times: counted once, answered each time
    client.publish(vote("good"), times=3, reply_to=client.reply_to,
                   correlation_id="c-good")

    replies = client.take_replies(8)
    assert {key: [error_of(reply) for reply in bodies]
            for key, bodies in replies.items() if key != "c-good"} == {
        "c-bad-json": ["MalformedRequest"],
        "c-pickle": ["MalformedRequest"],
        "c-list": ["TypeError"],
        "c-signature": ["IncorrectSignature"],
        "c-method": ["MethodNotFound"],
    }
    assert replies["c-good"] == [{"result": {"postId": "good", "upvote": 1,
                                             "downvote": 0, "score": 1},
                                  "error": None}] * 3
    assert dead_letters(cluster.amqp_uri, 7) == sorted(
        [(VOTE_KEY, "no reply_to", json.dumps(vote("no-reply")).encode())] * 3
        + [(VOTE_KEY, "no correlation_id",
            json.dumps(vote("no-correlation")).encode())] * 3
        + [(VOTE_KEY, "undecodable body", b'{"args": ')])

    assert votes.alive, votes.tail()
    assert cluster.counted() == {"good": {"upvote": 1}}
    refused = {labels: value for (name, labels), value in cluster.metrics(votes).items()
               if name == "rpc_requests_refused_total"}
    assert refused == {(("reason", "no_reply_to"),): 3,
                       (("reason", "no_correlation_id"),): 3,
                       (("reason", "undecodable"),): 3}
    log = votes.log_path.read_text()
    assert log.count("dead-lettered an RPC request to votes.vote: no reply_to") == 3
    assert log.count("dead-lettered an RPC request to votes.vote: undecodable") == 1
    assert log.count("refused an RPC request to votes.vote: undecodable body") == 2
    assert "Traceback" not in log
    # the RPC queue holds nothing, ready or unacked
    wait_until(lambda: cluster.queue_messages(contracts.RPC_QUEUE) == 0, 10,
               "the RPC queue to be empty")


def test_an_rpc_vote_redelivered_after_kill_9_counts_once(cluster, client,
                                                          private_redis):
    """A vote in its worker when the process dies (kill -9, its Redis write
    sent or not) is delivered again to the next process: counted once."""
    first = cluster.start_votes()
    private_redis.freeze(3)  # the worker's write waits behind DEBUG SLEEP
    client.publish(vote("killed"), reply_to=client.reply_to, correlation_id="c-killed")
    wait_until(lambda: cluster.queue_state(contracts.RPC_QUEUE)[0] == 0
               and cluster.queue_messages(contracts.RPC_QUEUE) == 1, 5,
               "the request to be in its worker, unacked")
    first.proc.kill()
    first.proc.wait()
    cluster.start_votes()
    assert client.take_replies(1) == {"c-killed": [{
        "result": {"postId": "killed", "upvote": 1, "downvote": 0, "score": 1},
        "error": None}]}
    assert cluster.counted() == {"killed": {"upvote": 1}}
