"""services.platform.http without sockets: its settings, its escaping, and the
upstream internals it relies on (checked in test_upstream.py)."""
import io

import pytest
from nameko.exceptions import ConfigurationError

from services.platform.http import protocol
from services.platform.http.access_log import escape_controls
from services.platform.http.limits import Limits


def test_defaults():
    assert Limits.from_config({}) == Limits(
        header_timeout=10.0, body_timeout=10.0, idle_timeout=15.0,
        max_connections=1000, max_large_bodies=4, max_header_bytes=16384,
        max_body_bytes=1048576, drain_timeout=6.0, stream_lifetime=300.0,
        max_streams=500)


@pytest.mark.parametrize("config, streams", [
    ({"HTTP_MAX_CONNECTIONS": 10}, 5),  # half, by default
    ({"HTTP_MAX_CONNECTIONS": 1}, 0),
    ({"HTTP_MAX_CONNECTIONS": 10, "HTTP_MAX_STREAMS": 0}, 0),
    ({"HTTP_MAX_CONNECTIONS": 2000, "HTTP_MAX_STREAMS": 1000}, 1000),
])
def test_streams_get_at_most_half_the_connections(config, streams):
    assert Limits.from_config(config).max_streams == streams


@pytest.mark.parametrize("key, value, message", [
    ("HTTP_HEADER_TIMEOUT", 11, "HTTP_HEADER_TIMEOUT must be a number from 0.1 to 10 (got 11)"),
    ("HTTP_MAX_CONNECTIONS", 0,
     "HTTP_MAX_CONNECTIONS must be an integer from 1 to 1000000 (got 0)"),
    ("HTTP_MAX_BODY_BYTES", "1MB",
     "HTTP_MAX_BODY_BYTES must be an integer from 0 to 67108864 (got '1MB')"),
    ("HTTP_DRAIN_TIMEOUT", 8, "HTTP_DRAIN_TIMEOUT must be a number from 0 to 7.5 (got 8)"),
    ("HTTP_STREAM_LIFETIME", 0,
     "HTTP_STREAM_LIFETIME must be a number from 1 to 86400 (got 0)"),
    ("HTTP_MAX_STREAMS", 501,
     "HTTP_MAX_STREAMS must be an integer from 0 to 500 (got 501): streams may hold "
     "at most half of HTTP_MAX_CONNECTIONS (1000); the rest is kept for other requests"),
    ("HTTP_MAX_STREAMS", -1,
     "HTTP_MAX_STREAMS must be an integer from 0 to 500 (got -1): streams may hold "
     "at most half of HTTP_MAX_CONNECTIONS (1000); the rest is kept for other requests"),
])
def test_bad_limits_stop_the_start(key, value, message):
    with pytest.raises(ConfigurationError) as error:
        Limits.from_config({key: value})
    assert str(error.value) == message


@pytest.mark.parametrize("text, escaped", [
    ("GET /\x1b[31mred\x07 HTTP/1.1", "GET /\\x1b[31mred\\x07 HTTP/1.1"),
    ("a\r\nb\tc\x00\x7f\x9b", "a\\x0d\\x0ab\\x09c\\x00\\x7f\\x9b"),
    ("plain /vote?postId=1", "plain /vote?postId=1"),
])
def test_control_characters_escaped(text, escaped):
    assert escape_controls(text) == escaped


def test_header_budget_counts_all_lines():
    budget = protocol._HeaderBudget(io.BytesIO(b"A: 1234\r\nB: 5678\r\n\r\n"), 12)
    assert budget.readline(65537) == b"A: 1234\r\n"
    with pytest.raises(protocol._HeadersTooLarge):
        budget.readline(65537)

