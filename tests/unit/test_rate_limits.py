"""Rate limit settings and the client address (no Redis)."""
import pytest
from nameko.exceptions import ConfigurationError

from services.gateway.rate_limits import (
    Rate,
    address_identity,
    client_address,
    parse_networks,
    parse_rate,
)
from services.platform.cors import Cors

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
