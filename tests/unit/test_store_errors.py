"""Which Redis errors mean "not now" (retried for as long as they last) and
which are mistakes (dead-lettered), built the way redis-py 8 builds them
from the server's replies; and what VoteStorage raises for each."""
from unittest import mock

import pytest
import redis
from redis._parsers.base import BaseParser

from services.votes import metrics
from services.votes.exceptions import StoreUnavailable
from services.votes.schemas import parse_event
from services.votes.store import (
    OTHER_ERROR,
    Limits,
    VoteStorage,
    store_error_kind,
)
from tests.conftest import make_event

# the replies as Redis 7 words them
REPLIES = {
    "OOM": "OOM command not allowed when used memory > 'maxmemory'.",
    "MISCONF": "MISCONF Redis is configured to save RDB snapshots, but it's "
               "currently unable to persist to disk. Commands that may modify "
               "the data set are disabled.",
    "BUSY": "BUSY Redis is busy running a script. You can only call "
            "SCRIPT KILL or SHUTDOWN NOSAVE.",
    "LOADING": "LOADING Redis is loading the dataset in memory",
    "READONLY": "READONLY You can't write against a read only replica.",
    "TRYAGAIN": "TRYAGAIN Multiple keys request during rehashing of slot",
    "MOVED": "MOVED 3999 127.0.0.1:6381",
    "ASK": "ASK 3999 127.0.0.1:6381",
    "CLUSTERDOWN": "CLUSTERDOWN The cluster is down",
    "MASTERDOWN": "MASTERDOWN Link with MASTER is down and "
                  "replica-serve-stale-data is set to 'no'.",
    "NOREPLICAS": "NOREPLICAS Not enough good replicas to write.",
    "NOPERM": "NOPERM User default has no permissions to run the 'evalsha' command",
}

MISTAKES = [
    # a Lua error the script did not foresee, as Redis 7 words it
    "ERR user_script:1: attempt to perform arithmetic on local 'x' "
    "(a nil value) script: 104ac674, on @user_script:1.",
    "ERR Unknown Redis command called from script script: 1996, on @user_script:1.",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "BUSYKEY Target key name already exists.",
    "BUSYGROUP Consumer Group name already exists",
    "EXECABORT Transaction discarded because of previous errors.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "ERR value is not an integer or out of range",
    "Error running script (call to f_1): @user_script:3: user_script:3: "
    "Script attempted to access nonexistent global variable 'OOM'",
]


def reply_error(reply):
    """The exception redis-py raises for an error reply."""
    return BaseParser.parse_error(reply)


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_each_not_now_reply_is_transient(kind):
    assert store_error_kind(reply_error(REPLIES[kind])) == kind


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_not_now_reply_from_a_script_or_a_pipeline_is_transient(kind):
    reply = REPLIES[kind]
    # Redis 7 keeps the code of an error met inside a script (a cluster
    # answers MOVED and ASK for the whole EVALSHA, which the parser
    # splits into slot and node: no script words after them)
    if kind not in ("MOVED", "ASK"):
        assert store_error_kind(reply_error(
            reply + " script: d3188097, on @user_script:12.")) == kind
    # Redis 6 quotes it after a dash
    code, rest = reply.split(" ", 1)
    assert store_error_kind(reply_error(
        "ERR Error running script (call to f_d318): @user_script:12: "
        "@user_script: 12: -{} {}".format(code, rest))) == kind
    # a transaction pipeline puts its own words first
    exc = reply_error(reply)
    redis.client.Pipeline.annotate_exception(None, exc, 1, ("HMGET", "k", "a"))
    assert str(exc).startswith("Command # 1 (HMGET k a) of pipeline caused error")
    assert store_error_kind(exc) == kind


def test_redis_py_raises_its_own_class_for_some_codes():
    classes = {kind: type(reply_error(reply)) for kind, reply in REPLIES.items()}
    assert classes == {
        "OOM": redis.exceptions.OutOfMemoryError,
        "MISCONF": redis.ResponseError,
        "BUSY": redis.ResponseError,
        "LOADING": redis.exceptions.BusyLoadingError,
        "READONLY": redis.exceptions.ReadOnlyError,
        "TRYAGAIN": redis.exceptions.TryAgainError,
        "MOVED": redis.exceptions.MovedError,
        "ASK": redis.exceptions.AskError,
        "CLUSTERDOWN": redis.exceptions.ClusterDownError,
        "MASTERDOWN": redis.exceptions.MasterDownError,
        "NOREPLICAS": redis.ResponseError,
        "NOPERM": redis.exceptions.NoPermissionError,
    }


@pytest.mark.parametrize("exc, kind", [
    (redis.ConnectionError("Error 111 connecting"), "CONNECTION"),
    (redis.exceptions.MaxConnectionsError("Too many connections"), "CONNECTION"),
    (redis.TimeoutError("Timeout reading from socket"), "TIMEOUT"),
    (redis.exceptions.AuthenticationError("invalid password"), "AUTH"),
])
def test_lost_connections_are_transient(exc, kind):
    assert store_error_kind(exc) == kind


@pytest.mark.parametrize("reply", MISTAKES)
def test_mistakes_are_not_transient(reply):
    assert store_error_kind(reply_error(reply)) == OTHER_ERROR


def test_other_redis_errors_are_not_transient():
    assert store_error_kind(redis.DataError("Invalid input")) == OTHER_ERROR
    assert store_error_kind(redis.ResponseError()) == OTHER_ERROR


def storage_failing_with(exc):
    client = mock.Mock()
    client.execute_command = mock.Mock(side_effect=exc)
    client.pipeline.return_value.__enter__ = mock.Mock(
        return_value=mock.Mock(execute=mock.Mock(side_effect=exc)))
    client.pipeline.return_value.__exit__ = mock.Mock(return_value=False)
    return VoteStorage(client, Limits(mark_ttl=60, idempotency_ttl=60,
                                      clock_skew=2.0, retraction_ttl=60,
                                      min_replicas=0))


def error_count(kind):
    return metrics.store_errors.labels(kind)._value.get()


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_storage_raises_store_unavailable_and_counts_the_kind(kind):
    storage = storage_failing_with(reply_error(REPLIES[kind]))
    event = parse_event(make_event())
    before = error_count(kind)

    with pytest.raises(StoreUnavailable) as raised:
        storage.apply(event.id, event.votes)
    assert str(raised.value).startswith(kind + ": ")
    with pytest.raises(StoreUnavailable):
        storage.counts_many([("348", None)])
    with pytest.raises(StoreUnavailable):
        storage.top(10)

    assert error_count(kind) == before + 3


def test_storage_lets_a_mistake_through_as_it_is():
    exc = reply_error(MISTAKES[0])
    storage = storage_failing_with(exc)
    event = parse_event(make_event())
    before = error_count(OTHER_ERROR)

    with pytest.raises(redis.ResponseError) as raised:
        storage.apply(event.id, event.votes)
    assert raised.value is exc
    assert not isinstance(raised.value, StoreUnavailable)
    assert error_count(OTHER_ERROR) == before + 1
