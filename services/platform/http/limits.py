"""The HTTP server's settings: names, defaults and bounds, read from the
service config and checked at start (README "Limits and protections")."""
from dataclasses import dataclass

from nameko.exceptions import ConfigurationError
from prometheus_client import Gauge

from services.settings import number

# config keys and defaults (README "Limits and protections")
LIMITS = (
    # key, attribute, default, minimum, maximum, integer
    ("HTTP_HEADER_TIMEOUT", "header_timeout", 10, 0.1, 10, False),
    ("HTTP_BODY_TIMEOUT", "body_timeout", 10, 0.1, 300, False),
    ("HTTP_IDLE_TIMEOUT", "idle_timeout", 15, 0.1, 600, False),
    ("HTTP_MAX_CONNECTIONS", "max_connections", 1000, 1, 1_000_000, True),
    ("HTTP_MAX_LARGE_BODIES", "max_large_bodies", 4, 1, 1000, True),
    ("HTTP_MAX_HEADER_BYTES", "max_header_bytes", 16384, 1024, 1024 * 1024, True),
    ("HTTP_MAX_BODY_BYTES", "max_body_bytes", 1024 * 1024, 0, 64 * 1024 * 1024, True),
    ("HTTP_DRAIN_TIMEOUT", "drain_timeout", 6, 0, 7.5, False),
    ("HTTP_STREAM_LIFETIME", "stream_lifetime", 300, 1, 86400, False),
)
# HTTP_MAX_STREAMS: from 0 to half of HTTP_MAX_CONNECTIONS (its default), so
# that streams never hold the connections other requests need
MAX_STREAMS_KEY = "HTTP_MAX_STREAMS"
STREAM_SHARE = 2                 # HTTP_MAX_CONNECTIONS // this, at most

limit_values = Gauge(
    "http_limit", "Configured limits of the HTTP server (README: Limits and "
    "protections).", ["server", "limit"])


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int
    max_large_bodies: int
    max_header_bytes: int
    max_body_bytes: int
    drain_timeout: float
    stream_lifetime: float
    max_streams: int

    @classmethod
    def from_config(cls, config):
        """Every limit from the service config, checked; a bad value raises
        nameko's ConfigurationError naming the setting."""
        values = {
            attribute: number(config, key, default, minimum, maximum, integer)
            for key, attribute, default, minimum, maximum, integer in LIMITS}
        most = values["max_connections"] // STREAM_SHARE
        try:
            values["max_streams"] = number(config, MAX_STREAMS_KEY, most, 0, most, True)
        except ConfigurationError as exc:
            raise ConfigurationError(
                "{}: streams may hold at most half of HTTP_MAX_CONNECTIONS ({}); "
                "the rest is kept for other requests".format(
                    exc, values["max_connections"])) from None
        return cls(**values)
