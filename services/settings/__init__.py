"""The settings of a service, read from its config once and checked at
start (services.settings.table declares them all).

A bad value (``APPLIED_MARK_TTL: 0``, ``PUBLISH_TIMEOUT: soon``) would
otherwise show up much later as a wrong count or a stuck request; here it
stops the service from starting, with a message that names the setting.

Every module reaches them one way: ``settings_of(container)`` (the
container's Settings, made at its start) in an extension's ``setup``;
``Settings(config)`` where there is only a config (the command-line tools,
unit tests). A feature that is off has its setting unset: its value is
None (an empty tuple for lists), and its module then injects a do-nothing
object whose ``enabled`` is False.

Credentials may come from files (the Docker and Kubernetes secrets
convention): with ``<VARIABLE>_FILE`` set in the environment, the value is
that file's text (one trailing newline dropped). ``apply_secret_files``
puts it in the config before anything reads it: at a container's start,
and in ``read_config`` for the tools.
"""
import os

import yaml
from nameko.cli.main import setup_yaml_parser
from nameko.exceptions import ConfigurationError
from nameko.extensions import DependencyProvider

from services.settings.kinds import flag, number  # noqa: F401 (the tools' parsers)
from services.settings.table import BY_NAME, BY_VARIABLE, SETTINGS

FILE_SUFFIX = "_FILE"
STREAM_SHARE = 2  # HTTP_MAX_STREAMS: at most HTTP_MAX_CONNECTIONS // this
CONTAINER_ATTRIBUTE = "_service_settings"


class Settings:
    """The checked value of every setting ``service`` reads (all of them
    for None or a service the table does not name), as attributes named
    by the variable in lower case (``settings.publish_timeout``), or by
    variable (``settings["PUBLISH_TIMEOUT"]``)."""

    def __init__(self, config, service=None):
        known = any(service in item.readers for item in SETTINGS)
        self.service = service if known else None
        self._values = {}
        for item in SETTINGS:
            if self.service is None or self.service in item.readers:
                self._values[item.name] = item.parse(item.key, lookup(config, item.path),
                                                     item.default)
        if "http_max_streams" in self._values:
            self._values["http_max_streams"] = max_streams(
                self._values["http_max_streams"], self._values["http_max_connections"])

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        if name in BY_NAME:
            raise AttributeError("{} is not a setting of the {} service".format(
                BY_NAME[name].variable, self.service))
        raise AttributeError(name)

    def __contains__(self, variable):
        return BY_VARIABLE[variable].name in self._values

    def __getitem__(self, variable):
        return getattr(self, BY_VARIABLE[variable].name)

    def __repr__(self):  # credentials never printed
        return "<Settings of {}: {}>".format(self.service or "every service", ", ".join(
            "{}={}".format(name, "***" if BY_NAME[name].secret and value else repr(value))
            for name, value in sorted(self._values.items())))


def max_streams(value, connections):
    """HTTP_MAX_STREAMS, from 0 to half of HTTP_MAX_CONNECTIONS (unset:
    that half), so that streams never hold the connections other requests
    need."""
    most = connections // STREAM_SHARE
    try:
        return number({"HTTP_MAX_STREAMS": value}, "HTTP_MAX_STREAMS", most, 0, most, True)
    except ConfigurationError as exc:
        raise ConfigurationError(
            "{}: streams may hold at most half of HTTP_MAX_CONNECTIONS ({}); the rest "
            "is kept for other requests".format(exc, connections)) from None


def settings_of(container):
    """The container's Settings, made once (its credentials files read
    into its config first); raises ConfigurationError on a bad value."""
    config = container.config  # AttributeError for an unbound extension's None
    settings = getattr(container, CONTAINER_ATTRIBUTE, None)
    if not isinstance(settings, Settings):  # a test's Mock container has any attribute
        apply_secret_files(config)
        settings = Settings(config, getattr(container, "service_name", None))
        # on the container itself: extensions hold a weakref.proxy of it
        setattr(container, CONTAINER_ATTRIBUTE, settings)
    return settings


def read(config, variable):
    """One setting's checked value, from a config (where a function is
    given a config rather than a container)."""
    item = BY_VARIABLE[variable]
    return item.parse(item.key, lookup(config, item.path), item.default)


def lookup(config, path):
    for part in path:
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _put(config, path, value):
    for part in path[:-1]:
        config = config.setdefault(part, {})
    config[path[-1]] = value


def secret_files(environ=None):
    """{credential setting: its value} for every ``<VARIABLE>_FILE`` set;
    raises ConfigurationError when the variable is set too, or when the
    file cannot be read (naming the variable and path, never the value)."""
    environ = os.environ if environ is None else environ
    found = {}
    for item in SETTINGS:
        file_variable = item.variable + FILE_SUFFIX
        path = environ.get(file_variable)
        if not item.secret or not path:
            continue
        if environ.get(item.variable):
            raise ConfigurationError(
                "set {} or {}, not both".format(item.variable, file_variable))
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError("{}: cannot read {}: {}".format(
                file_variable, path, getattr(exc, "strerror", None) or type(exc).__name__)
            ) from None
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise ConfigurationError("{}: {} is empty".format(file_variable, path))
        found[item] = value
    return found


def apply_secret_files(config, environ=None):
    """Put the credentials that files hold into ``config``, in place."""
    for item, value in secret_files(environ).items():
        _put(config, item.path, value)
    return config


def read_config(path):
    """A nameko config file as the services read it (${VAR:default}
    substitution, credentials from their files), for the command-line
    tools."""
    setup_yaml_parser()
    with open(path) as handle:
        return apply_secret_files(yaml.safe_load(handle))


class FromSettings(DependencyProvider):
    """Injects ``build(settings)`` of the container's settings, made once at
    setup: the voter tokens checker, the vote policy, the operator gate."""

    def __init__(self, build):
        self.build = build

    def setup(self):
        self.value = self.build(settings_of(self.container))

    def get_dependency(self, worker_ctx):
        return self.value
