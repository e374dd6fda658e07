"""Every setting, declared once: the environment variable that sets it
(config.yml's ``${VARIABLE:default}``), where it is in the config, its
kind and bounds, its default, whether it is a credential (then it may come
from the file ``<VARIABLE>_FILE`` names), and who reads it. config.yml and
docs/configuration.md carry the same defaults
(tests/unit/test_configuration_page.py)."""
from dataclasses import dataclass

from services import contracts
from services.settings import kinds

GATEWAY, VOTES, TOOLS = contracts.GATEWAY_SERVICE, contracts.VOTES_SERVICE, "tools"
BOTH = (GATEWAY, VOTES)
YEAR = 366 * 24 * 60 * 60


@dataclass(frozen=True)
class Setting:
    variable: str          # the environment variable; its lower case names the value
    path: tuple            # where config.yml puts it
    parse: object          # (key, raw, default) -> value; services.settings.kinds
    default: object = None  # None: unset
    readers: tuple = BOTH
    secret: bool = False   # a credential: may come from <variable>_FILE, never printed

    @property
    def name(self):
        return self.variable.lower()

    @property
    def key(self):
        """The name messages give it: the config key."""
        return self.path[-1] if len(self.path) == 1 else self.variable


def setting(variable, parse, default=None, readers=BOTH, secret=False, path=None):
    return Setting(variable, tuple(path or (variable,)), parse, default,
                   tuple(readers), secret)


def _uri(key, raw, default):
    return kinds.text(key, raw, default)


SETTINGS = (
    # brokers (nameko reads AMQP_URI, max_workers and the heartbeat too)
    setting("AMQP_URI", _uri, "amqp://guest:guest@localhost:5672/", BOTH + (TOOLS,), True),
    setting("AMQP_QUEUE_TYPE", kinds.choice("classic", "quorum", phrase="one of classic, quorum"),
            "classic", BOTH + (TOOLS,)),
    # TLS to RabbitMQ: nameko's own setting, read by every connection
    setting("AMQP_SSL", kinds.ssl_options, None, BOTH + (TOOLS,)),
    setting("AMQP_HEARTBEAT", kinds.real(0, 3600), 10, path=["HEARTBEAT"]),
    setting("REDIS_URI", _uri, "redis://localhost:6379/0", BOTH + (TOOLS,), True,
            path=["REDIS_URIS", contracts.VOTES_REDIS]),
    setting("MAX_WORKERS", kinds.integer(1, 10_000), 100, path=["max_workers"]),
    setting("GC_GEN0_THRESHOLD", kinds.integer(0, 10_000_000), 20000),
    # the store (services/votes/store)
    setting("VOTE_BUCKETS", kinds.integer(1, contracts.MAX_BUCKETS), contracts.DEFAULT_BUCKETS,
            (VOTES, TOOLS)),
    setting("APPLIED_MARK_TTL", kinds.integer(1, YEAR), 86400, (VOTES, TOOLS)),
    # the gateway's Idempotency-Key memory lives as long as the votes
    # service's claims: one setting for both (contracts)
    setting(contracts.IDEMPOTENCY_TTL_CONFIG_KEY, kinds.integer(1, YEAR),
            contracts.DEFAULT_IDEMPOTENCY_TTL),
    setting("MAX_CLOCK_SKEW", kinds.real(0, 3600), 2, [VOTES]),
    setting("RETRACTION_TTL", kinds.integer(1, YEAR), 3600, [VOTES]),
    setting("REDIS_MIN_REPLICAS", kinds.optional_integer(0, 16), None, [VOTES]),
    setting("REDIS_WAIT_TIMEOUT", kinds.integer(1, 60_000), 1000, [VOTES]),
    setting("REDIS_REPLICA_LOSS", kinds.choice("continue", "hold"), "continue", [VOTES]),
    setting("COUNTS_FLUSH_INTERVAL", kinds.real(0.01, 60), 0.25, [VOTES]),
    # addresses (nameko binds WEB_SERVER_ADDRESS)
    setting("WEB_SERVER_ADDRESS", kinds.text, "0.0.0.0:5000", [GATEWAY]),
    setting("METRICS_ADDRESS", kinds.text, "0.0.0.0:9100", [VOTES]),
    setting("OPERATOR_ADDRESS", kinds.text, None, [GATEWAY]),
    setting("OPERATOR_TOKEN", kinds.text, None, BOTH, True),
    # the gateway's reads and writes
    setting("PUBLISH_TIMEOUT", kinds.real(0.1, 60), 5, [GATEWAY]),
    setting("READ_TIMEOUT", kinds.real(0.1, 60), 2, [GATEWAY]),
    setting("READ_CACHE_TTL", kinds.real(0, 1), 1, [GATEWAY]),
    setting("READ_CACHE_SIZE", kinds.integer(1, 10_000_000), 20000, [GATEWAY]),
    setting("CREATED_AT_WINDOW", kinds.integer(0, 3600), 300, [GATEWAY]),
    setting("VOTE_BY_GET", kinds.boolean, True, [GATEWAY]),
    # signed voter tokens (services/gateway/tokens.py)
    setting("VOTER_TOKEN_SECRET", kinds.text, None, [GATEWAY], True),
    setting("VOTER_TOKEN_PUBLIC_KEY", kinds.text, None, [GATEWAY], True),
    setting("VOTER_TOKEN_ALGORITHM", kinds.choice("RS256", "ES256", phrase="one of RS256, ES256"),
            "RS256", [GATEWAY]),
    setting("VOTER_TOKEN_AUDIENCE", kinds.text, "votes", [GATEWAY]),
    setting("VOTER_TOKEN_ANONYMOUS", kinds.choice("allow", "deny", lower=True), "allow",
            [GATEWAY]),
    # rate limits (services/gateway/rate_limits.py)
    setting("RATE_LIMIT_PER_ADDRESS", kinds.rate("address"), None, [GATEWAY]),
    setting("RATE_LIMIT_PER_VOTER", kinds.rate("voter"), None, [GATEWAY]),
    setting("RATE_LIMIT_MAX_VOTERS", kinds.integer(1, 1000), 100, [GATEWAY]),
    setting("RATE_LIMIT_READS_PER_ADDRESS", kinds.rate("read", zero_is_off=True),
            "1000/second", [GATEWAY]),
    setting("TRUSTED_PROXIES", kinds.networks),
    # CORS (services/platform/cors.py)
    setting("CORS_ORIGINS", kinds.origins),
    setting("CORS_ALLOW_CREDENTIALS", kinds.boolean, False),
    setting("CORS_MAX_AGE", kinds.integer(0, 86400), 600),
    # the HTTP servers' limits (services/platform/http/limits.py)
    setting("HTTP_HEADER_TIMEOUT", kinds.real(0.1, 10), 10),
    setting("HTTP_BODY_TIMEOUT", kinds.real(0.1, 300), 10),
    setting("HTTP_IDLE_TIMEOUT", kinds.real(0.1, 600), 15),
    setting("HTTP_MAX_CONNECTIONS", kinds.integer(1, 1_000_000), 1000),
    setting("HTTP_MAX_LARGE_BODIES", kinds.integer(1, 1000), 4),
    setting("HTTP_MAX_HEADER_BYTES", kinds.integer(1024, 1024 * 1024), 16384),
    setting("HTTP_MAX_BODY_BYTES", kinds.integer(0, 64 * 1024 * 1024), 1048576),
    setting("HTTP_DRAIN_TIMEOUT", kinds.real(0, 7.5), 6),
    # from 0 to half of HTTP_MAX_CONNECTIONS (unset: that half): checked by
    # services.settings.Settings, as it depends on HTTP_MAX_CONNECTIONS
    setting("HTTP_MAX_STREAMS", kinds.unchecked, None),
    setting("HTTP_STREAM_LIFETIME", kinds.real(1, 86400), 300),
    # logs (config.yml's LOGGING block)
    setting("LOG_LEVEL", kinds.text, "INFO", path=["LOGGING", "root", "level"]),
    setting("LOG_FORMAT", kinds.choice("plain", "json"), "plain",
            path=["LOGGING", "handlers", "console", "formatter"]),
)

BY_NAME = {item.name: item for item in SETTINGS}
BY_VARIABLE = {item.variable: item for item in SETTINGS}
