"""Fixtures shared by every layer of tests.

Each test that touches RabbitMQ gets a vhost of its own (made and removed
in batches with rabbitmqctl, so no management plugin is needed), and each
test that touches Redis gets a database of its own, flushed before and
after.
"""
import itertools
import os
import subprocess
import time
import uuid
from urllib.parse import urljoin

import pytest
import redis
import requests
from nameko.testing.utils import find_free_port

AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1:6379")
# databases 1-15 in turn; 0 is left to `make run`
_redis_dbs = itertools.cycle(range(1, 16))


def rabbitmqctl(*args, check=True):
    return subprocess.run(["rabbitmqctl", "-q", *args], check=check,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=60).returncode


def _erlang_list(names):
    return "[{}]".format(", ".join('<<"{}">>'.format(name) for name in names))


class VhostPool:
    """A fresh vhost for each test, made and deleted in batches: every
    rabbitmqctl call starts an Erlang VM (about 0.8 s), so one ``eval`` per
    BATCH vhosts instead of three calls per test saves minutes."""

    BATCH = 25

    def __init__(self):
        self.prefix = "test-{}".format(uuid.uuid4().hex[:8])
        self.serial = itertools.count()
        self.free = []
        self.used = []

    def take(self):
        if not self.free:
            names = ["{}-{}".format(self.prefix, next(self.serial))
                     for _ in range(self.BATCH)]
            rabbitmqctl("eval", (
                "[begin ok = rabbit_vhost:add(V, <<\"guest\">>), "
                "ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, "
                "<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"guest\">>) end "
                "|| V <- {}], ok.").format(_erlang_list(names)))
            self.free = names[::-1]
        vhost = self.free.pop()
        self.used.append(vhost)
        return vhost

    def release(self, vhost):
        """Done with: deleted with the next batch (or at the end)."""
        if len(self.used) >= self.BATCH:
            self.delete(self.used)

    def delete(self, names):
        names, names[:] = list(names), []
        # clean-up only: a broker restarted by a fault test may refuse for a while
        for _ in range(10):
            if rabbitmqctl("eval", "[rabbit_vhost:delete(V, <<\"guest\">>) || V <- {}], ok.".format(
                    _erlang_list(names)), check=False) == 0:
                return
            time.sleep(1)

    def close(self):
        self.delete(self.used + self.free)


@pytest.fixture(scope="session")
def vhost_pool():
    pool = VhostPool()
    yield pool
    pool.close()


@pytest.fixture
def rabbit_config(vhost_pool):
    """Overrides nameko's fixture: a vhost of the test's own, never used
    before (see VhostPool; no management plugin is needed)."""
    vhost = vhost_pool.take()
    yield {
        "AMQP_URI": "amqp://guest:guest@{}/{}".format(AMQP_HOST, vhost),
        "vhost": vhost,
    }
    vhost_pool.release(vhost)


@pytest.fixture
def redis_uri():
    uri = "redis://{}/{}".format(REDIS_HOST, next(_redis_dbs))
    client = redis.Redis.from_url(uri)
    client.flushdb()
    yield uri
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_uri):
    client = redis.Redis.from_url(redis_uri, decode_responses=True)
    yield client
    client.close()


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
