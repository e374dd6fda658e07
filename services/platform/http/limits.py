"""The HTTP server's limits, from the service's Settings (declared with
their bounds in services/settings/table.py; docs/security.md, "Limits and
protections")."""
from dataclasses import dataclass, fields

from prometheus_client import Gauge

from services.settings import Settings

limit_values = Gauge(
    "http_limit", "Configured limits of the HTTP server (README: Limits and "
    "protections).", ["server", "limit"])


@dataclass(frozen=True)
class Limits:
    # each is the setting HTTP_<ATTRIBUTE IN UPPER CASE>
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
    def from_settings(cls, settings):
        return cls(**{field.name: getattr(settings, "http_" + field.name)
                      for field in fields(cls)})

    @classmethod
    def from_config(cls, config):
        """Every limit from a service config, checked; a bad value raises
        nameko's ConfigurationError naming the setting."""
        return cls.from_settings(Settings(config))


LIMITS = tuple(field.name for field in fields(Limits))
