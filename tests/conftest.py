"""Fixtures shared by every layer of tests.

Each test that touches RabbitMQ gets a vhost of its own (made and removed
in batches with rabbitmqctl, so no management plugin is needed), and each
test that touches Redis gets a database of its own, flushed before and
after.
"""
import itertools
import os
import time
import uuid
from urllib.parse import urljoin

import pytest
import redis
import requests
from nameko.testing.utils import find_free_port

from harness.rabbit import VhostPool, amqp_uri
from harness.redis_cluster import RedisClusterServers, free_ports_in
from services import __version__

# what /health answers while the process has its servers
HEALTH_OK = {"status": "ok", "version": __version__}

AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1:6379")
# as in config.yml: the stop deadline
SERVICE_CONTAINER_CLS = "services.platform.container.DeadlineContainer"
# databases 1-15 in turn; 0 is left to `make run`, and holds the claims
# (vote-tests:db:<n>) that keep two test runs off one database
_redis_dbs = itertools.cycle(range(1, 16))
CLAIMS_DB = 0
DB_CLAIM_TTL = 900  # seconds: longer than any test; a claim left by a killed run lapses
RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# where the tests' Redis Clusters listen (their buses on these + 10000)
CLUSTER_PORTS = range(*(int(p) for p in os.environ.get(
    "TEST_REDIS_CLUSTER_PORTS", "7100-7200").split("-")))


@pytest.fixture(scope="session")
def vhost_pool():
    """A fresh vhost for each test (see harness.rabbit.VhostPool: one
    rabbitmqctl call per 50 vhosts, each call starts an Erlang VM: 0.9 s
    for 10, 2.2 s for 50)."""
    VhostPool.delete_stale()
    pool = VhostPool(batch=50)
    yield pool
    pool.close()


@pytest.fixture
def rabbit_config(vhost_pool):
    """Overrides nameko's fixture: a vhost of the test's own, never used
    before (see VhostPool; no management plugin is needed)."""
    vhost = vhost_pool.take()
    yield {
        "AMQP_URI": amqp_uri(AMQP_HOST, vhost),
        "vhost": vhost,
    }
    vhost_pool.release(vhost)


@pytest.fixture
def single_redis_uri():
    """A database of the shared Redis, flushed before and after. It is
    claimed in database 0 first, so that two test runs on one machine
    never flush each other's data."""
    claims = redis.Redis.from_url("redis://{}/{}".format(REDIS_HOST, CLAIMS_DB))
    token = uuid.uuid4().hex
    deadline = time.monotonic() + 120
    while True:
        db = next(_redis_dbs)
        claim = "vote-tests:db:{}".format(db)
        if claims.set(claim, token, nx=True, ex=DB_CLAIM_TTL):
            break
        assert time.monotonic() < deadline, "no free Redis database for 120 s"
        time.sleep(0.05)
    uri = "redis://{}/{}".format(REDIS_HOST, db)
    client = redis.Redis.from_url(uri)
    client.flushdb()
    try:
        yield uri
    finally:
        client.flushdb()
        client.close()
        # only our own claim: one that lapsed and was taken again stays
        claims.eval(RELEASE_CLAIM, 1, claim, token)
        claims.close()


@pytest.fixture
def redis_uri(single_redis_uri):
    return single_redis_uri


@pytest.fixture
def redis_client(redis_uri):
    client = redis.Redis.from_url(redis_uri, decode_responses=True)
    yield client
    client.close()


def start_redis_cluster(folder, ports=CLUSTER_PORTS, **options):
    """A private Redis Cluster (harness.redis_cluster) on free ports of
    ``ports``, three masters with a replica each, every replica in sync;
    ``options``: RedisClusterServers' (tls, password)."""
    servers = RedisClusterServers(folder, free_ports_in(ports, 6), **options)
    try:
        servers.start()
        servers.wait_replicated()
    except BaseException:
        servers.stop()
        raise
    return servers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """One Redis Cluster for the tests that share it (each flushes it)."""
    servers = start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    yield servers
    servers.stop()


def flush_cluster(servers):
    for port in servers.masters():
        with servers.node_client(port) as client:
            client.flushall()
    servers.wait_replicated()


@pytest.fixture
def web_port():
    return find_free_port()


@pytest.fixture
def config(rabbit_config, redis_uri, web_port):
    """A whole service config on the test's own vhost and database."""
    return {
        "AMQP_URI": rabbit_config["AMQP_URI"],
        "REDIS_URIS": {"votes": redis_uri},
        "WEB_SERVER_ADDRESS": "127.0.0.1:{}".format(web_port),
        "METRICS_ADDRESS": "127.0.0.1:{}".format(find_free_port()),
        "HEARTBEAT": 10,
        "max_workers": 50,
        "SERVICE_CONTAINER_CLS": SERVICE_CONTAINER_CLS,
    }


class WebSession(requests.Session):
    """requests.Session with URLs relative to the gateway under test
    (nameko's web_session fixture breaks on werkzeug 3)."""

    def __init__(self, base_url):
        super().__init__()
        self.base_url = base_url

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 30)
        return super().request(method, urljoin(self.base_url, url), *args, **kwargs)


@pytest.fixture
def web_session(web_port):
    session = WebSession("http://127.0.0.1:{}/".format(web_port))
    yield session
    session.close()


_ts = itertools.count(1_700_000_000_000_000)


def make_vote(**overrides):
    """A valid vote as the gateway puts it in a vote_cast event."""
    vote = {
        "voteId": uuid.uuid4().hex,
        "postId": "348",
        "score": 1,
        "ts": next(_ts),
    }
    vote.update(overrides)
    return {key: value for key, value in vote.items() if value is not None}


def make_event(*votes, event_id=None):
    return {"id": event_id or uuid.uuid4().hex, "votes": list(votes) or [make_vote()]}
