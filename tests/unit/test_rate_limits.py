"""Rate limit settings, the client address, the read limit, the bound on
voters, and how the limiter takes Redis's failures (no Redis)."""
import time
from unittest import mock

import pytest
import redis
from nameko.exceptions import ConfigurationError

from services import contracts
from services.gateway.exceptions import RateLimited, RateLimitsUnavailable
from services.gateway.exceptions import ValidationError as InvalidRequest
from services.gateway.rate_limits import (
    Rate,
    RateLimiter,
    RateLimits,
    ReadWindows,
    address_identity,
    client_address,
    parse_rate,
    parse_reads,
    top_read_cost,
)
from services.gateway.schemas import Vote
from services.platform.batching import Expired
from services.platform.cors import Cors
from services.platform.proxies import parse_networks

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1")


@pytest.mark.parametrize("text, rate", [
    ("60/minute", Rate("address", 60, 60)),
    ("1000/hour", Rate("address", 1000, 3600)),
    ("100/10 seconds", Rate("address", 100, 10)),
    (" 5 / day ", Rate("address", 5, 86400)),
    ("", None),
    (None, None),
])
def test_parse_rate(text, rate):
    assert parse_rate("address", "RATE_LIMIT_PER_ADDRESS", text) == rate


@pytest.mark.parametrize("text", ["60", "0/minute", "60/fortnight", "60/0 seconds",
                                  "-1/minute", "sixty/minute"])
def test_parse_rate_refuses(text):
    with pytest.raises(ConfigurationError) as error:
        parse_rate("address", "RATE_LIMIT_PER_ADDRESS", text)
    assert str(error.value) == (
        "RATE_LIMIT_PER_ADDRESS must look like 60/minute or 100/10 seconds "
        "(got {!r})".format(text))


@pytest.mark.parametrize("peer, forwarded, client", [
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),        # untrusted peer
    ("10.1.2.3", "", "10.1.2.3"),                           # no header
    ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
    ("10.1.2.3", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # spoofed first entry
    ("10.1.2.3", "198.51.100.1, 192.168.1.1", "198.51.100.1"),  # two proxies
    ("10.1.2.3", "10.0.0.5, 10.0.0.6", "10.0.0.5"),         # all trusted
    ("10.1.2.3", "garbage", "10.1.2.3"),                    # not an address
    ("10.1.2.3", "garbage, 198.51.100.1", "198.51.100.1"),
])
def test_client_address(peer, forwarded, client):
    environ = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded}
    assert client_address(environ, PROXIES) == client


def test_no_trusted_proxies_ignores_the_header():
    environ = {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}
    assert client_address(environ, ()) == "10.1.2.3"


def test_ipv6_by_its_64():
    assert address_identity("2001:db8:0:1::5") == "2001:db8:0:1::/64"
    assert address_identity("198.51.100.1") == "198.51.100.1"


@pytest.mark.parametrize("settings, message", [
    ({"CORS_ORIGINS": "forum.example"},
     "CORS_ORIGINS: 'forum.example' is not an origin (scheme://host[:port])"),
    ({"CORS_ORIGINS": "https://a.example", "CORS_MAX_AGE": -1},
     "CORS_MAX_AGE must be an integer from 0 to 86400 (got -1)"),
    ({"CORS_ORIGINS": "https://a.example", "CORS_ALLOW_CREDENTIALS": "maybe"},
     "CORS_ALLOW_CREDENTIALS must be true or false (got 'maybe')"),
])
def test_cors_settings_refused(settings, message):
    with pytest.raises(ConfigurationError) as error:
        Cors.from_config(settings)
    assert str(error.value) == message


@pytest.mark.parametrize("text, rate", [
    (None, Rate("read", 1000, 1)),
    ("", Rate("read", 1000, 1)),
    (0, None),
    ("0", None),
    ("5/hour", Rate("read", 5, 3600)),
])
def test_parse_reads(text, rate):
    assert parse_reads(text) == rate


def test_parse_reads_refuses():
    with pytest.raises(ConfigurationError) as error:
        parse_reads("-1")
    assert str(error.value) == (
        "RATE_LIMIT_READS_PER_ADDRESS must look like 60/minute or 100/10 seconds "
        "(got '-1')")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_read_windows():
    clock = Clock()
    windows = ReadWindows(Rate("read", 3, 10), clock=clock, most=2)
    windows.take("a", 2)
    windows.take("a", 1)
    with pytest.raises(RateLimited) as refused:
        windows.take("a", 1)
    assert str(refused.value) == "more than 3 reads in 10 s from this client address"
    assert refused.value.headers == {
        "Retry-After": "10", "RateLimit-Limit": "3", "RateLimit-Remaining": "0",
        "RateLimit-Reset": "10", "RateLimit-Policy": "3;w=10"}
    windows.take("b", 3)  # another client
    clock.now += 9.5
    with pytest.raises(RateLimited) as refused:
        windows.take("a", 1)
    assert refused.value.headers["Retry-After"] == "1"
    clock.now += 0.5  # the window ended: a new one
    windows.take("a", 3)
    # at most two windows kept: a third client drops the oldest (b's)
    windows.take("c", 1)
    assert list(windows.windows) == ["a", "c"]
    windows.take("b", 3)
    assert list(windows.windows) == ["c", "b"]


def test_top_read_cost():
    assert [top_read_cost(n) for n in (1, 9, 10, 11, 20, 100)] == [1, 1, 1, 2, 2, 10]


def vote(voter):
    return Vote(postId="p", score=1, voterId=voter)


def test_a_request_naming_too_many_voters_is_refused_before_any_check():
    asked = []
    limits = RateLimits(Rate("address", 5, 60), Rate("voter", 5, 60), (), asked.append,
                        max_voters=3)
    with pytest.raises(InvalidRequest) as refused:
        limits.check({"REMOTE_ADDR": "198.51.100.1"}, [vote(v) for v in "abcd"])
    assert str(refused.value) == "votes: name at most 3 different voterIds in one request"
    assert asked == []
    # three voters (one twice), and the address first
    asked_limits = []
    limits.submit = lambda check: asked_limits.append(check) or (0, 0, 0)
    limits.check({"REMOTE_ADDR": "198.51.100.1"}, [vote(v) for v in "abca"] + [vote(None)])
    assert asked_limits == [[(Rate("address", 5, 60), "198.51.100.1", 5),
                             (Rate("voter", 5, 60), "a", 2), (Rate("voter", 5, 60), "b", 1),
                             (Rate("voter", 5, 60), "c", 1)]]


def test_a_read_counts_once_per_request():
    limits = RateLimits(None, None, (), None, reads=Rate("read", 2, 60))
    environ = {"REMOTE_ADDR": "198.51.100.1"}
    limits.read(environ)
    limits.read(environ)  # the worker after the inline path: not again
    limits.read({"REMOTE_ADDR": "198.51.100.1"})
    with pytest.raises(RateLimited):
        limits.read({"REMOTE_ADDR": "198.51.100.1"})
    RateLimits(None, None, (), None, reads=None).read({"REMOTE_ADDR": "198.51.100.1"})


def limiter(**config):
    provider = RateLimiter()
    provider.container = mock.Mock(config={
        "REDIS_URIS": {"votes": "redis://127.0.0.1:1/0"},
        "RATE_LIMIT_PER_ADDRESS": "5/minute", **config})
    provider.setup()
    provider.group = mock.Mock()
    return provider


ADDRESS = {"REMOTE_ADDR": "198.51.100.1"}


def test_a_limit_that_refused_refuses_again_without_asking():
    provider = limiter()
    key = contracts.rate_key("address", 60, "198.51.100.1")
    provider._refused(key, 4, 30_000, time.monotonic())
    with pytest.raises(RateLimited) as refused:
        provider.limits.check(ADDRESS, [vote(None)] * 2)  # 4 + 2 > 5
    assert refused.value.headers["RateLimit-Remaining"] == "1"
    assert 29 <= int(refused.value.headers["Retry-After"]) <= 30
    provider.group.submit.assert_not_called()
    # one vote still fits: Redis is asked
    provider.group.submit.return_value = (0, 0, 0)
    provider.limits.check(ADDRESS, [vote(None)])
    provider.group.submit.assert_called_once()


@pytest.mark.parametrize("error", [redis.ConnectionError("refused"),
                                   redis.BusyLoadingError("loading")])
def test_a_lost_connection_is_an_outage_and_lets_votes_through(error):
    provider = limiter()
    provider.group.submit.side_effect = error
    provider.limits.check(ADDRESS, [vote(None)])
    assert provider.paused_until > time.monotonic()
    provider.limits.check(ADDRESS, [vote(None)])
    provider.group.submit.assert_called_once()  # paused: not asked again


@pytest.mark.parametrize("error", [Expired(), redis.TimeoutError("slow"),
                                   redis.ResponseError("BUSY")])
@pytest.mark.parametrize("ping", [True, redis.ResponseError("BUSY")])
def test_a_slow_redis_that_answers_a_ping_refuses_that_request(error, ping):
    provider = limiter()
    provider.group.submit.side_effect = error
    client = provider.client = mock.Mock()
    client.ping.side_effect = [ping] if isinstance(ping, Exception) else None
    for _ in range(2):
        with pytest.raises(RateLimitsUnavailable) as refused:
            provider.limits.check(ADDRESS, [vote(None)])
        assert str(refused.value) == "the rate limits could not be checked in time; try again"
    assert client.ping.call_count == 1  # the answer stands for a second
    assert provider.paused_until == 0.0


@pytest.mark.parametrize("ping", [redis.TimeoutError("no answer"),
                                  redis.ConnectionError("refused")])
def test_a_slow_redis_that_does_not_answer_a_ping_is_an_outage(ping):
    provider = limiter()
    provider.group.submit.side_effect = redis.TimeoutError("slow")
    client = provider.client = mock.Mock()
    client.ping.side_effect = ping
    provider.limits.check(ADDRESS, [vote(None)])  # let through
    assert provider.paused_until > time.monotonic()


def test_no_limit_set_checks_nothing():
    provider = RateLimiter()
    provider.container = mock.Mock(config={"RATE_LIMIT_READS_PER_ADDRESS": 0})
    provider.setup()
    assert provider.group is None
    provider.limits.check(ADDRESS, [vote("a")])
    provider.limits.read(ADDRESS)
