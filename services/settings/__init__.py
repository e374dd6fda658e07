"""Numeric settings read from the service config, checked at start.

A bad value (``APPLIED_MARK_TTL: 0``, ``PUBLISH_TIMEOUT: soon``) would
otherwise show up much later as a wrong count or a stuck request; here it
stops the service from starting, with a message that names the setting.
"""
import yaml
from nameko.cli.main import setup_yaml_parser
from nameko.exceptions import ConfigurationError


def read_config(path):
    """A nameko config file as the services read it (${VAR:default}
    substitution), for the command-line tools."""
    setup_yaml_parser()
    with open(path) as handle:
        return yaml.safe_load(handle)


def number(config, key, default, minimum, maximum=None, integer=False):
    """``config[key]`` (or ``default`` when absent or null) as an int or a
    float within [minimum, maximum]; raises ConfigurationError otherwise."""
    value = config.get(key)
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
    value = config.get(key)
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
