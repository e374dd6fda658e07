"""How one setting's raw config value becomes its value: each kind is a
function ``(key, raw) -> value`` that raises nameko's ConfigurationError
naming the setting. The table (services.settings.table) says which
setting is of which kind."""
import collections
import ipaddress
import re

from nameko.exceptions import ConfigurationError


def number(config, key, default, minimum, maximum=None, integer=False):
    """``config[key]`` (or ``default`` when absent or null) as an int or a
    float within [minimum, maximum]; raises ConfigurationError otherwise."""
    return _number(key, config.get(key), default, minimum, maximum, integer)


def _number(key, value, default, minimum, maximum, integer):
    if value is None:
        value = default
    kind = "an integer" if integer else "a number"
    bounds = "from {} to {}".format(minimum, maximum) if maximum is not None \
        else ">= {}".format(minimum)
    ok = (type(value) is int) if integer else (
        type(value) in (int, float) and value == value)  # not NaN
    if ok and (value < minimum or (maximum is not None and value > maximum)):
        ok = False
    if not ok:
        raise ConfigurationError("{} must be {} {} (got {!r})".format(
            key, kind, bounds, value))
    return value if integer else float(value)


def flag(config, key, default=False):
    """``config[key]`` as a bool (true/false, 1/0, yes/no; empty or absent:
    ``default``); raises ConfigurationError otherwise."""
    return _flag(key, config.get(key), default)


def _flag(key, value, default):
    if value is None or value == "":
        return default
    if type(value) is bool:
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigurationError("{} must be true or false (got {!r})".format(key, value))


def integer(minimum, maximum=None):
    return lambda key, raw, default: _number(key, raw, default, minimum, maximum, True)


def real(minimum, maximum=None):
    return lambda key, raw, default: _number(key, raw, default, minimum, maximum, False)


def optional_integer(minimum, maximum=None):
    """An integer, or None while unset (the reader then decides)."""
    def parse(key, raw, default):
        if raw is None or raw == "":
            return None
        return _number(key, raw, None, minimum, maximum, True)
    return parse


def unchecked(key, raw, default):
    """As given: checked with other settings (services.settings)."""
    return default if raw is None or raw == "" else raw


def ssl_options(key, raw, default):
    """nameko's AMQP_SSL: unset, true/false, or a mapping of ssl options."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, (bool, dict)):
        return raw
    raise ConfigurationError(
        "{} must be true, false or a mapping of ssl options "
        "({{ca_certs: ..., certfile: ..., keyfile: ...}}) (got {!r})".format(key, raw))


def boolean(key, raw, default):
    return _flag(key, raw, default)


def text(key, raw, default):
    """A string; None while unset or empty (a feature that is then off)."""
    if raw is None or str(raw) == "":
        return default
    return str(raw)


def choice(*choices, phrase=None, lower=False):
    """One of ``choices``; unset or empty: ``default``. ``phrase`` words the
    refusal ("one of a, b"; by default "a or b")."""
    words = phrase or " or ".join(choices)

    def parse(key, raw, default):
        if raw is None or raw == "":
            return default
        value = str(raw).lower() if lower else raw
        if value not in choices:
            raise ConfigurationError("{} must be {} (got {!r})".format(key, words, value))
        return value
    return parse


Rate = collections.namedtuple("Rate", "name limit seconds")
Rate.__doc__ = """``limit`` votes (or reads) per ``seconds``; ``name`` is
the setting's kind (address, voter or read), in keys and messages."""
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)?\s*(second|minute|hour|day)s?\s*$")


def parse_rate(name, key, value):
    """A Rate from ``60/minute`` or ``100/10 seconds``; None when empty."""
    if value is None or str(value).strip() == "":
        return None
    match = _RATE.match(str(value))
    if match is None or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ConfigurationError(
            "{} must look like 60/minute or 100/10 seconds (got {!r})".format(
                key, value))
    seconds = int(match.group(2) or 1) * PERIODS[match.group(3)]
    return Rate(name, int(match.group(1)), seconds)


def rate(name, zero_is_off=False):
    """A Rate named ``name``; unset or empty: the default's (None: off);
    with ``zero_is_off``, ``0`` is off too."""
    def parse(key, raw, default):
        if raw is None or str(raw).strip() == "":
            raw = default
        if zero_is_off and str(raw).strip() == "0":
            return None
        return parse_rate(name, key, raw)
    return parse


def _items(raw):
    """A YAML list, or text separated by commas or spaces."""
    if not raw:
        return []
    items = raw if isinstance(raw, list) else re.split(r"[,\s]+", str(raw))
    return [str(item).strip() for item in items if str(item).strip()]


def networks(key, raw, default):
    """Addresses or CIDR blocks, as a tuple of ip_network."""
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _items(raw))
    except ValueError as exc:
        raise ConfigurationError("{}: {}".format(key, exc)) from None


_ORIGIN = re.compile(r"^https?://[^/\s]+$")


def origins(key, raw, default):
    """Browser origins (scheme://host[:port]), as a tuple."""
    found = tuple(item.rstrip("/") for item in _items(raw))
    for origin in found:
        if not _ORIGIN.match(origin):
            raise ConfigurationError(
                "{}: {!r} is not an origin (scheme://host[:port])".format(key, origin))
    return found
