"""TLS and passwords against real servers: a private RabbitMQ node with a
TLS listener only (a client certificate required) and a redis-server with
a TLS port only and a password, both from a CA made at test time. A real
gateway and votes service (``nameko run``) count votes, answer reads and
feed the live stream over them; a malformed event is dead-lettered and
``dead_letters show`` reads it over TLS. Each request's id is followed
from the gateway's log to the votes service's log and the dead letters."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kombu
import pytest
import redis
import requests
import yaml

from harness.process import ROOT, START_TIMEOUT, wait_until
from harness.rabbit_node import RabbitNode
from harness.redis_server import RedisServer
from harness.tls import TestCA
from services import contracts
from services.platform import amqp_layer
from services.votes.dead_letters import DEAD_LETTER_QUEUE
from services.votes.store import connect as store_connect
from tests.conftest import start_redis_cluster
from tests.fault.harness import Cluster
from tests.integration.test_stream import Stream

PASSWORD = "tls-test-secret"
DRAIN_TIMEOUT = 30
# not CLUSTER_PORTS: make test's other runs start Redis Clusters there, at
# the same time as this one
TLS_CLUSTER_PORTS = range(7200, 7300)


@pytest.fixture(scope="module")
def test_ca():
    # under /tmp: pytest's tmp_path is closed to the rabbitmq user
    folder = Path(tempfile.mkdtemp(prefix="votes-ca-"))
    yield TestCA(folder / "ca").make()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker(test_ca):
    node = RabbitNode("tls-{}".format(id(test_ca)), tls=test_ca)
    node.start()
    yield node
    node.stop()


class TlsCluster(Cluster):
    """Cluster whose own looks at the queues go over TLS too."""

    def __init__(self, *args, amqp_ssl, **kwargs):
        super().__init__(*args, settings={"AMQP_SSL": amqp_ssl}, **kwargs)
        self.amqp_config = {"AMQP_URI": self.amqp_uri, "AMQP_SSL": amqp_ssl}

    def queue_state(self, name):
        try:
            with amqp_layer.connect(self.amqp_config) as connection:
                _, ready, consumers = connection.default_channel.queue_declare(
                    name, passive=True)
            return ready, consumers
        except Exception:
            return 0, 0

    def close(self, show_logs=False):
        nodes = getattr(self.redis_server, "nodes", None)
        if nodes is None:
            return super().close(show_logs)
        for process in self.processes:  # on a Redis Cluster: its nodes' logs
            process.kill()
        self.redis.close()
        if show_logs:
            for process in self.processes + nodes:
                print("\n----- {} ({}) last lines -----\n{}".format(
                    process.label, process.log_path, process.tail()))


def services_on(request, tmp_path, test_ca, tls_broker, servers):
    """The services of one test over the TLS broker and ``servers``, their
    logs shown if it failed."""
    cluster = TlsCluster(tmp_path, tls_broker.uri(), "/", servers, broker=tls_broker,
                         amqp_ssl=test_ca.amqp_ssl())
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)


@pytest.fixture
def tls_cluster(request, tmp_path, test_ca, tls_broker):
    server = RedisServer(tmp_path, tls=test_ca, password=PASSWORD)
    server.start()
    yield from services_on(request, tmp_path, test_ca, tls_broker, server)
    server.kill()


def plain_attempts_fail(cluster, test_ca):
    """The servers speak TLS only: plain AMQP and plain Redis on the same
    ports fail, as do TLS without a client certificate and Redis without
    the password."""
    plain_amqp = cluster.amqp_uri.replace("amqps://", "amqp://", 1)
    with pytest.raises(Exception):  # noqa: B017 (reset, or a handshake error)
        with kombu.Connection(plain_amqp, connect_timeout=3) as connection:
            connection.connect()
    with pytest.raises(Exception):  # noqa: B017
        with kombu.Connection(cluster.amqp_uri, connect_timeout=3,
                              ssl={"ca_certs": str(test_ca.ca)}) as connection:
            connection.connect()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=cluster.redis_server.port, socket_timeout=3).ping()
    without_password = re.sub(r"//:[^@]*@", "//", cluster.redis_server.uri)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(without_password, socket_timeout=3).ping()


def log_lines(process, text):
    return [line for line in process.log_path.read_text().splitlines() if text in line]


def test_votes_counted_read_streamed_and_dead_lettered_over_tls(tls_cluster, test_ca):
    cluster = tls_cluster
    plain_attempts_fail(cluster, test_ca)
    votes = cluster.start_votes()
    gateway = cluster.start_gateway()
    wait_until(lambda: log_lines(gateway, "live counts: consuming"), START_TIMEOUT,
               "the gateway's feed to connect")
    stream = Stream(cluster.web_port, "postId=tls")
    try:
        assert stream.event()["event"] == "snapshot"
        for index, score in enumerate([1, 1, 1, -1]):
            answer = requests.post(cluster.base_url + "/vote", json={
                "postId": "tls", "score": score},
                headers={"X-Request-Id": "tls-vote-{}".format(index)}, timeout=10)
            assert answer.status_code == 202, answer.text
            assert answer.headers["X-Request-Id"] == "tls-vote-{}".format(index)
        # the feed (votes service -> gateway) over TLS: updates until exact
        wait_until(lambda: stream.event()["data"].get("score") == 2, DRAIN_TIMEOUT,
                   "the stream's update")
    finally:
        stream.close()

    # Redis over TLS with its password
    wait_until(lambda: cluster.counted().get("tls") == {"upvote": 3, "downvote": 1},
               DRAIN_TIMEOUT, "the votes counted")
    # a read: the RPC client and the votes service's replies over TLS
    assert cluster.read_through_gateway("tls") == (200, {
        "postId": "tls", "upvote": 3, "downvote": 1, "score": 2})

    # each request id in both services' logs: the gateway's line of the
    # event that carried it, and the votes service's line of that event
    for index in range(4):
        request_id = "tls-vote-{}".format(index)
        sent = log_lines(gateway, "request {} votes ".format(request_id))
        assert len(sent) == 1, sent
        event_id = re.search(r"vote_cast (\w+) published", sent[0]).group(1)
        wait_until(lambda request_id=request_id: log_lines(votes, request_id),
                   DRAIN_TIMEOUT, "the votes service's line")
        (handled,) = log_lines(votes, request_id)
        assert "vote_cast {} handled: requests".format(event_id) in handled

    # a malformed event, dead-lettered with its request ids
    with amqp_layer.connect(cluster.amqp_config) as connection:
        kombu.Producer(connection.default_channel).publish(
            {"id": "malformed-1"}, exchange=contracts.EVENTS_EXCHANGE,
            routing_key=contracts.VOTE_CAST, serializer="json",
            headers={"x-request-ids": ["bad-req-7", "bad req\x1b[31m"]})
    wait_until(lambda: cluster.queue_state(DEAD_LETTER_QUEUE.name)[0] == 1,
               DRAIN_TIMEOUT, "the malformed event dead-lettered")
    (dead,) = log_lines(votes, "dead-lettered a vote_cast message")
    assert "of requests bad-req-7: invalid payload" in dead
    assert "\x1b" not in votes.log_path.read_text()

    config = Path(votes.argv[votes.argv.index("--config") + 1])
    assert yaml.safe_load(config.read_text())["AMQP_URI"].startswith("amqps://")
    shown = subprocess.run(
        [sys.executable, "-m", "services.votes.dead_letters", "show",
         "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    (line,) = shown.stdout.splitlines()
    entry = json.loads(line)
    assert entry["requestIds"] == ["bad-req-7"]
    assert entry["reason"].startswith("invalid payload")
    assert json.loads(entry["body"]) == {"id": "malformed-1"}
    assert cluster.queue_state(DEAD_LETTER_QUEUE.name)[0] == 1  # show leaves it


def test_request_ids_answered_made_and_replaced(tls_cluster):
    """Every answer names its request id: the client's when valid, else a
    fresh one (never refused); errors too."""
    cluster = tls_cluster
    cluster.start_gateway()
    made = requests.get(cluster.base_url + "/vote-counts", timeout=10)
    assert made.status_code == 400
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    for bad in ["two words", "x" * 129, ""]:
        answer = requests.get(cluster.base_url + "/no-such-page",
                              headers={"X-Request-Id": bad}, timeout=10)
        assert answer.status_code == 404
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-Id"]), bad
    longest = "a" * 128
    kept = requests.get(cluster.base_url + "/health",
                        headers={"X-Request-Id": longest}, timeout=10)
    assert kept.headers["X-Request-Id"] == longest


@pytest.fixture
def tls_redis_cluster(request, tmp_path, test_ca, tls_broker):
    servers = start_redis_cluster(tmp_path, TLS_CLUSTER_PORTS, tls=test_ca,
                                  password=PASSWORD)
    yield from services_on(request, tmp_path, test_ca, tls_broker, servers)
    servers.stop()


def test_votes_counted_on_a_redis_cluster_over_tls_with_a_password(tls_redis_cluster):
    """Every node TLS only (clients, bus, replication) with a password; the
    votes service finds the cluster from one rediss:// URI and writes to
    every master (WAIT on its replica) over TLS."""
    cluster = tls_redis_cluster
    servers = cluster.redis_server
    assert cluster.redis_server.uri.startswith("rediss://:{}@".format(PASSWORD))
    for port in servers.ports[:1]:
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_timeout=3).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, ssl=True, ssl_ca_certs=str(servers.tls.ca),
                        socket_timeout=3).ping()
    cluster.start_votes()
    cluster.start_gateway()
    # posts whose keys fall on different masters
    posts = ["tls-c{}".format(index) for index in range(12)]
    for post in posts:
        for score in (1, 1, -1):
            answer = requests.post(cluster.base_url + "/vote", json={
                "postId": post, "score": score}, timeout=10)
            assert answer.status_code == 202, answer.text
    wait_until(lambda: {post: counts for post, counts in cluster.counted().items()
                        if post in posts} == {
                            post: {"upvote": 2, "downvote": 1} for post in posts},
               DRAIN_TIMEOUT, "the votes counted on the cluster")
    assert cluster.read_through_gateway(posts[0]) == (200, {
        "postId": posts[0], "upvote": 2, "downvote": 1, "score": 1})


def test_an_acl_user_over_tls_is_how_the_store_and_tools_connect(tmp_path, test_ca):
    """An ACL user (the default user off) over TLS: the client every part
    makes (services.votes.store.connect, through redis_nodes) logs in
    with the user and password of the rediss:// URI; the same URI without
    the user is refused."""
    server = RedisServer(tmp_path, tls=test_ca, username="votes", password=PASSWORD)
    server.start()
    try:
        assert server.uri.startswith("rediss://votes:{}@".format(PASSWORD))
        client = store_connect(server.uri)
        try:
            assert client.acl_whoami() == "votes"
            assert client.connection_pool.connection_class is redis.SSLConnection
        finally:
            client.close()
        with pytest.raises(redis.AuthenticationError):
            store_connect(server.uri.replace("//votes:", "//:", 1)).ping()
    finally:
        server.kill()
