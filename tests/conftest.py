"""Fixtures shared by every layer of tests.

Each test that touches RabbitMQ gets a vhost of its own (made and removed
in batches with rabbitmqctl, so no management plugin is needed), and each
test that touches Redis gets a database of its own, flushed before and
after.
"""
import itertools
import os
import re
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
# as in config.yml: the stop deadline
SERVICE_CONTAINER_CLS = "services.platform.container.DeadlineContainer"
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
    BATCH vhosts instead of three calls per test saves minutes. Few vhosts
    live at once: RabbitMQ starts each one's message stores when its app
    starts, and with hundreds a fault test's start_app takes minutes."""

    BATCH = 10
    STALE = 3600  # seconds: a vhost this old was left by a run that died

    def __init__(self):
        # the creation time in the name tells stale vhosts apart
        self.prefix = "test-{}-{}".format(int(time.time()), uuid.uuid4().hex[:6])
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

    @staticmethod
    def delete(names):
        """Delete the vhosts named, and empty the list."""
        doomed = list(names)
        names.clear()
        if not doomed:
            return
        # clean-up only: a broker restarted by a fault test may refuse for a while
        for _ in range(10):
            if rabbitmqctl("eval", "[rabbit_vhost:delete(V, <<\"guest\">>) || V <- {}], ok.".format(
                    _erlang_list(doomed)), check=False) == 0:
                return
            time.sleep(1)

    @classmethod
    def delete_stale(cls):
        """Vhosts of test runs that died before their clean-up."""
        listed = subprocess.run(["rabbitmqctl", "-q", "list_vhosts", "--no-table-headers"],
                                capture_output=True, text=True, timeout=60).stdout
        now = time.time()
        stale = []
        for name in listed.split():
            match = re.fullmatch(
                r"test-(\d+)-[0-9a-f]+-\d+|test-[0-9a-f]{12}|test-[0-9a-f]{8}-\d+", name)
            if match and (match.group(1) is None or now - int(match.group(1)) > cls.STALE):
                stale.append(name)
        cls.delete(stale)

    def close(self):
        self.delete(self.used)
        self.delete(self.free)


@pytest.fixture(scope="session")
def vhost_pool():
    VhostPool.delete_stale()
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
