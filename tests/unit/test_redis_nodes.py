"""services.platform.redis_nodes alone: the redis+sentinel URI, and the
durability rule of WriteRouter (how many replicas a write waits for) over
a stand-in for one Redis server."""
import logging
from types import SimpleNamespace

import pytest
import redis
from nameko.exceptions import ConfigurationError
from redis.sentinel import MasterNotFoundError

from services.platform import redis_nodes
from services.platform.redis_nodes import (
    Command,
    NotReplicated,
    SentinelTarget,
    WriteRouter,
    parse_sentinel_uri,
)
from services.votes.store import read_limits, store_error_kind


@pytest.mark.parametrize("uri, target", [
    ("redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster/0",
     SentinelTarget([("host1", 26379), ("host2", 26379), ("host3", 26379)],
                    "mymaster", 0, None, None, False)),
    ("redis+sentinel://sentinel/mymaster",
     SentinelTarget([("sentinel", 26379)], "mymaster", 0, None, None, False)),
    ("redis+sentinel://:s%40cret@10.0.0.1:5000,[::1]:5001/votes-main/3",
     SentinelTarget([("10.0.0.1", 5000), ("::1", 5001)], "votes-main", 3,
                    None, "s@cret", False)),
    ("redis+sentinel://app:pw@h:26380/m/1?sentinel_auth=same",
     SentinelTarget([("h", 26380)], "m", 1, "app", "pw", True)),
    ("REDIS+SENTINEL://h/m/", SentinelTarget([("h", 26379)], "m", 0, None, None, False)),
    ("redis+sentinel://h/m/0?sentinel_auth=none",
     SentinelTarget([("h", 26379)], "m", 0, None, None, False)),
])
def test_sentinel_uris_that_parse(uri, target):
    assert redis_nodes.is_sentinel_uri(uri)
    assert parse_sentinel_uri(uri) == target


BAD = "REDIS_URI {}: {}; the form is " + redis_nodes.SENTINEL_FORM


@pytest.mark.parametrize("uri, shown, reason", [
    ("redis+sentinel:///mymaster/0", None, "no sentinel address"),
    ("redis+sentinel://:pw@/mymaster/0", "redis+sentinel://:***@/mymaster/0",
     "no sentinel address"),
    ("redis+sentinel://h1,,h2/m/0", None, "an empty sentinel address in 'h1,,h2'"),
    ("redis+sentinel://h1:26379,/m/0", None,
     "an empty sentinel address in 'h1:26379,'"),
    ("redis+sentinel://h1:port/m/0", None,
     "the port of 'h1:port' must be an integer from 1 to 65535"),
    ("redis+sentinel://h1:0/m/0", None,
     "the port of 'h1:0' must be an integer from 1 to 65535"),
    ("redis+sentinel://h1:65536/m/0", None,
     "the port of 'h1:65536' must be an integer from 1 to 65535"),
    ("redis+sentinel://h1:/m/0", None, "'h1:' is not an address"),
    ("redis+sentinel://::1:26379/m/0", None, "'::1:26379' is not an address"),
    ("redis+sentinel://h1:26379", None,
     "no service name: the path must name the master (/mymaster)"),
    ("redis+sentinel://h1:26379/", None,
     "no service name: the path must name the master (/mymaster)"),
    ("redis+sentinel://h1//0", None,
     "no service name: the path must name the master (/mymaster)"),
    ("redis+sentinel://h1/my%20master/0", None,
     "the service name 'my master' holds a space or a control character"),
    ("redis+sentinel://h1/mymaster/zero", None,
     "the database must be an integer >= 0, not 'zero'"),
    ("redis+sentinel://h1/mymaster/-1", None,
     "the database must be an integer >= 0, not '-1'"),
    ("redis+sentinel://h1/mymaster/0/1", None,
     "the path must be /service or /service/db, not '/mymaster/0/1'"),
    ("redis+sentinel://h1/m/0?sentinel_password=x", None,
     "unknown option 'sentinel_password' (known: sentinel_auth)"),
    ("redis+sentinel://h1/m/0?sentinel_auth=yes", None,
     "sentinel_auth must be none or same, not 'yes'"),
    ("redis+sentinel://h1/m/0?sentinel_auth=same&sentinel_auth=same", None,
     "option 'sentinel_auth' given twice"),
    ("redis+sentinel://h1/m/0#x", None, "a URI of Sentinel has no #fragment"),
    ("rediss+sentinel://u:pw@h1/m/0", "rediss+sentinel://u:***@h1/m/0",
     "the scheme must be redis+sentinel (TLS through Sentinel is not supported)"),
    ("redis+sentinel://[::1/m/0", None, "not a URI (Invalid IPv6 URL)"),
])
def test_sentinel_uris_refused_with_the_reason(uri, shown, reason):
    with pytest.raises(ConfigurationError) as raised:
        redis_nodes.connect(uri)
    assert str(raised.value) == BAD.format(shown or uri, reason)


def test_the_password_never_shows_in_the_error():
    with pytest.raises(ConfigurationError) as raised:
        parse_sentinel_uri("redis+sentinel://app:hunter2@h1:x/m/0")
    assert "hunter2" not in str(raised.value)
    assert str(raised.value).startswith("REDIS_URI redis+sentinel://app:***@h1:x/m/0: ")


def test_other_uris_are_not_sentinel():
    for uri in ("redis://localhost:6379/0", "rediss://h:6380/0", "unix:///tmp/r.sock"):
        assert not redis_nodes.is_sentinel_uri(uri)


class Server:
    """One Redis server as WriteRouter sees it: INFO replication gives
    ``role`` and ``in_sync`` replicas online (plus one still loading);
    WAIT answers ``acked`` (or what ``on_wait`` returns); every pipeline's
    commands are kept."""

    def __init__(self, in_sync, acked=None, role="master"):
        self.in_sync = in_sync
        self.acked = in_sync if acked is None else acked
        self.on_wait = None
        self.role = role
        self.sent = []   # [[command args, ...] of each round trip]
        self.infos = 0

    def info(self, section):
        assert section == "replication"
        self.infos += 1
        info = {"role": self.role, "connected_slaves": self.in_sync + 1,
                "slave_read_only": 1}
        for i in range(self.in_sync):
            info["slave{}".format(i)] = {"ip": "10.0.0.{}".format(i), "port": 6379,
                                         "state": "online", "offset": 1, "lag": 0}
        info["slave{}".format(self.in_sync)] = {"ip": "10.0.0.9", "port": 6379,
                                                "state": "wait_bgsave"}
        return info

    def _reply(self, args):
        if args[0] == "WAIT":
            return self.on_wait(args[1]) if self.on_wait else self.acked
        if self.role != "master":
            return redis.exceptions.ReadOnlyError(
                "You can't write against a read only replica.")
        return "OK"

    def execute_command(self, *args, **options):
        self.sent.append([args])
        reply = self._reply(args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def pipeline(self, transaction):
        return Pipeline(self)


class Pipeline:
    def __init__(self, server):
        self.server = server
        self.queued = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def execute_command(self, *args, **options):
        self.queued.append(args)

    def execute(self, raise_on_error):
        self.server.sent.append(self.queued)
        return [self.server._reply(args) for args in self.queued]


class Seen:
    """What the router reported through its callbacks."""

    def __init__(self):
        self.short = []
        self.unreplicated = 0

    def router(self, server, **options):
        return WriteRouter(
            server, wait_timeout_ms=50,
            on_replicas=lambda name, short: self.short.append((name, short)),
            on_unreplicated=self.count, **options)

    def count(self, name):
        self.unreplicated += 1


WRITE = [Command("k", ("SET", "k", "1"))]


@pytest.fixture
def looks_every_time(monkeypatch):
    monkeypatch.setattr(redis_nodes, "REPLICA_LOOK", 0)


def test_a_write_waits_for_the_replica_its_master_has():
    server, seen = Server(in_sync=1), Seen()
    router = seen.router(server, min_replicas=None)

    assert router.run(WRITE) == ["OK"]
    assert server.sent == [[("SET", "k", "1"), ("WAIT", 1, 50)]]
    assert (seen.short, seen.unreplicated) == ([("single", False)], 0)
    assert router.durability() == (1, {})


def test_without_any_replica_ever_nothing_waits_and_nothing_is_reduced():
    server, seen = Server(in_sync=0), Seen()
    router = seen.router(server, min_replicas=None)

    assert router.run(WRITE) == ["OK"]
    assert server.sent == [[("SET", "k", "1")]]
    assert (seen.short, seen.unreplicated) == ([("single", False)], 0)
    assert router.durability() == (0, {})


def test_a_master_that_lost_its_replica_acks_with_reduced_durability(
        looks_every_time, caplog):
    server, seen = Server(in_sync=1), Seen()
    router = seen.router(server, min_replicas=None)
    router.run(WRITE)
    server.in_sync = 0   # its replica is gone for good

    with caplog.at_level(logging.WARNING, logger=redis_nodes.__name__):
        for _ in range(3):
            assert router.run(WRITE) == ["OK"]
    assert server.sent[1:] == [[("SET", "k", "1")]] * 3  # no WAIT
    assert seen.unreplicated == 3
    assert seen.short[-1] == ("single", True)
    assert router.durability() == (1, {"single": 0})
    assert [r.getMessage() for r in caplog.records] == [
        "Redis master single has 0 replica(s) in sync, 1 wanted: its writes are "
        "acked without them (reduced durability) until one is back"]

    server.in_sync = 1   # a replica is back: writes wait for it again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=redis_nodes.__name__):
        assert router.run(WRITE) == ["OK"]
    assert server.sent[-1] == [("SET", "k", "1"), ("WAIT", 1, 50)]
    assert seen.unreplicated == 3
    assert router.durability() == (1, {})
    assert [r.getMessage() for r in caplog.records] == [
        "Redis master single has 1 replica(s) in sync again: its writes wait for 1"]


def test_a_wait_that_falls_short_while_the_replica_is_there_is_retried():
    server, seen = Server(in_sync=1, acked=0), Seen()
    router = seen.router(server, min_replicas=None)

    with pytest.raises(NotReplicated) as raised:
        router.run(WRITE)
    assert str(raised.value) == "NOREPLICAS WAIT saw 0 of 1 replicas in 50 ms"
    assert store_error_kind(raised.value) == "NOREPLICAS"  # retried, never acked
    assert server.infos == 2  # looked again after the shortfall
    assert seen.unreplicated == 0


def test_a_wait_that_falls_short_because_the_replica_just_went_is_acked():
    server, seen = Server(in_sync=1), Seen()
    router = seen.router(server, min_replicas=None)

    def replica_dies(wanted):
        server.in_sync = 0
        return 0
    server.on_wait = replica_dies

    assert router.run(WRITE) == ["OK"]
    assert seen.unreplicated == 1
    assert seen.short == [("single", False), ("single", True)]


def test_hold_waits_for_the_replicas_wanted_whatever_the_master_has():
    server, seen = Server(in_sync=0, acked=0), Seen()
    router = seen.router(server, min_replicas=1, hold=True)

    with pytest.raises(NotReplicated):
        router.run(WRITE)
    assert server.sent == [[("SET", "k", "1"), ("WAIT", 1, 50)]]
    assert seen.unreplicated == 0
    assert router.durability() == (1, {"single": 0})


def test_min_replicas_caps_the_wait_and_zero_never_looks():
    server, seen = Server(in_sync=2), Seen()
    router = seen.router(server, min_replicas=1)
    router.run(WRITE)
    assert server.sent[-1] == [("SET", "k", "1"), ("WAIT", 1, 50)]

    server = Server(in_sync=2)
    router = seen.router(server, min_replicas=0)
    router.run(WRITE)
    assert (server.sent, server.infos) == ([[("SET", "k", "1")]], 0)
    assert router.durability() == (0, {})


def test_a_demoted_master_is_not_taken_for_one_without_replicas():
    server, seen = Server(in_sync=0, role="slave"), Seen()
    router = seen.router(server, min_replicas=1)
    with pytest.raises(redis.exceptions.ReadOnlyError):
        router.run(WRITE)
    assert (seen.short, seen.unreplicated) == ([], 0)
    assert router.durability() == (1, {})


def test_a_sentinel_master_is_named_by_its_service():
    client = redis_nodes.connect("redis+sentinel://127.0.0.1:1/votes-main/0")
    try:
        assert isinstance(client, redis_nodes.SentinelMaster)
        assert redis_nodes.node_clients(client) == [("votes-main", client)]
    finally:
        client.close()


@pytest.mark.parametrize("exc, kind", [
    (MasterNotFoundError("No master found for 'mymaster'"), "CONNECTION"),
    (redis.ConnectionError("The previous master is now a slave"), "CONNECTION"),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
     "READONLY"),
    (NotReplicated("NOREPLICAS WAIT saw 0 of 1 replicas in 1000 ms"), "NOREPLICAS"),
])
def test_errors_of_a_sentinel_failover_are_retried_later(exc, kind):
    assert store_error_kind(exc) == kind


@pytest.mark.parametrize("value, read", [(None, "continue"), ("", "continue"),
                                         ("continue", "continue"), ("hold", "hold")])
def test_replica_loss_setting(value, read):
    assert read_limits({"REDIS_REPLICA_LOSS": value}).replica_loss == read


@pytest.mark.parametrize("value", ["wait", "HOLD", 1, True])
def test_replica_loss_setting_refused(value):
    with pytest.raises(ConfigurationError) as raised:
        read_limits({"REDIS_REPLICA_LOSS": value})
    assert str(raised.value) == (
        "REDIS_REPLICA_LOSS must be continue or hold (got {!r})".format(value))


def test_a_master_that_does_not_answer_is_asked_at_most_once_a_second(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(redis_nodes, "time", SimpleNamespace(monotonic=lambda: now[0]))
    server, seen = Server(in_sync=1), Seen()
    router = seen.router(server, min_replicas=None)
    assert router.durability() == (1, {})
    server.info = lambda section: (_ for _ in ()).throw(
        redis.ConnectionError("Timeout connecting to server"))
    now[0] += redis_nodes.REPLICA_LOOK
    for _ in range(5):  # /ready asking while the master is gone
        assert router.durability() == (1, {})  # what was known is kept
    calls = []
    server.info = lambda section: calls.append(section) or {"role": "master"}
    assert router.durability() == (1, {})
    assert calls == []
    now[0] += redis_nodes.REPLICA_LOOK
    assert router.durability() == (1, {"single": 0})
    assert calls == ["replication"]
