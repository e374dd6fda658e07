"""The settings object (services/settings): one per container, made at its
start from the table, each service checking what it reads; credentials
from <VARIABLE>_FILE; no module parsing the config itself."""
import re
from pathlib import Path

import pytest
from nameko.exceptions import ConfigurationError

from services import settings
from services.platform.container import DeadlineContainer
from services.settings import Settings, apply_secret_files, read_config, secret_files, table

SERVICES = Path(__file__).resolve().parents[2] / "services"
SECRET = "amqp://user:hunter2@broker:5672/"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text", [SECRET, SECRET + "\n", SECRET + "\r\n"])
def test_a_credential_comes_from_its_file_without_the_trailing_newline(tmp_path, text):
    environ = {"AMQP_URI_FILE": write(tmp_path, "amqp", text)}
    config = apply_secret_files({"AMQP_URI": "amqp://guest:guest@localhost:5672/"}, environ)
    assert config["AMQP_URI"] == SECRET


def test_redis_uri_from_its_file_goes_where_the_config_has_it(tmp_path):
    environ = {"REDIS_URI_FILE": write(tmp_path, "redis", "redis://:pw@r:6379/0\n")}
    config = apply_secret_files({"REDIS_URIS": {"votes": "redis://localhost:6379/0"}}, environ)
    assert config == {"REDIS_URIS": {"votes": "redis://:pw@r:6379/0"}}


def test_a_pem_key_keeps_its_inner_newlines(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----"
    environ = {"VOTER_TOKEN_PUBLIC_KEY_FILE": write(tmp_path, "pem", pem + "\n")}
    assert apply_secret_files({}, environ) == {"VOTER_TOKEN_PUBLIC_KEY": pem}


def test_every_credential_may_come_from_a_file_and_nothing_else():
    secrets = {item.variable for item in table.SETTINGS if item.secret}
    assert secrets == {"AMQP_URI", "REDIS_URI", "OPERATOR_TOKEN", "VOTER_TOKEN_SECRET",
                       "VOTER_TOKEN_PUBLIC_KEY"}


def test_a_file_for_a_setting_that_is_no_credential_is_ignored(tmp_path):
    environ = {"PUBLISH_TIMEOUT_FILE": write(tmp_path, "t", "1")}
    assert secret_files(environ) == {}


def test_setting_both_a_variable_and_its_file_refuses_to_start(tmp_path):
    environ = {"OPERATOR_TOKEN": "a", "OPERATOR_TOKEN_FILE": write(tmp_path, "t", "b")}
    with pytest.raises(ConfigurationError) as raised:
        secret_files(environ)
    assert str(raised.value) == "set OPERATOR_TOKEN or OPERATOR_TOKEN_FILE, not both"


def test_an_unreadable_file_names_the_variable_and_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigurationError) as raised:
        secret_files({"REDIS_URI_FILE": missing})
    assert str(raised.value) == "REDIS_URI_FILE: cannot read {}: No such file or directory".format(
        missing)
    with pytest.raises(ConfigurationError) as raised:
        secret_files({"REDIS_URI_FILE": str(tmp_path)})
    assert str(raised.value) == "REDIS_URI_FILE: cannot read {}: Is a directory".format(tmp_path)


def test_an_empty_file_refuses_and_no_message_holds_the_secret(tmp_path):
    path = write(tmp_path, "empty", "\n")
    with pytest.raises(ConfigurationError) as raised:
        secret_files({"VOTER_TOKEN_SECRET_FILE": path})
    assert str(raised.value) == "VOTER_TOKEN_SECRET_FILE: {} is empty".format(path)
    config = apply_secret_files({}, {"AMQP_URI_FILE": write(tmp_path, "a", SECRET)})
    assert "hunter2" not in repr(Settings(config))


def test_the_tools_read_credentials_from_files(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URI", raising=False)
    monkeypatch.setenv("REDIS_URI_FILE", write(tmp_path, "redis", "redis://:pw@r:1/0\n"))
    config = read_config(Path(__file__).resolve().parents[2] / "config.yml")
    assert config["REDIS_URIS"]["votes"] == "redis://:pw@r:1/0"


def test_each_service_checks_the_settings_it_reads_and_no_other():
    bad = {"PUBLISH_TIMEOUT": "soon"}
    assert Settings(bad, "votes").vote_buckets == 16
    with pytest.raises(ConfigurationError, match="PUBLISH_TIMEOUT must be a number"):
        Settings(bad, "gateway")
    with pytest.raises(AttributeError, match="PUBLISH_TIMEOUT is not a setting of the votes"):
        assert Settings({}, "votes").publish_timeout is None


class Nothing:
    name = "nothing"


def test_a_container_makes_its_settings_once_at_start(tmp_path, monkeypatch):
    """Made at start (a bad value refuses the start, not the construction),
    with the credentials files read into its config before any reader."""
    monkeypatch.delenv("AMQP_URI", raising=False)
    monkeypatch.setenv("AMQP_URI_FILE", write(tmp_path, "amqp", "memory://\n"))
    container = DeadlineContainer(Nothing, {"AMQP_URI": "amqp://nowhere:1/"})
    assert container.config["AMQP_URI"] == "amqp://nowhere:1/"
    container.start()
    try:
        assert container.config["AMQP_URI"] == "memory://"
        assert settings.settings_of(container) is settings.settings_of(container)
        assert settings.settings_of(container).amqp_uri == "memory://"
    finally:
        container.kill()


def test_every_default_is_a_valid_value_and_every_setting_has_a_reader():
    assert Settings({}).http_max_streams == 500
    assert all(item.readers for item in table.SETTINGS)


def test_no_module_parses_the_config_itself():
    """The table's settings are read through services.settings only: no
    number()/flag() and no config lookup of a setting by its key."""
    keys = "|".join(sorted({item.path[0] for item in table.SETTINGS}, key=len, reverse=True))
    lookup = re.compile(r"\bconfig(?:\.get\(|\[)\s*[\"'](?:{})[\"']".format(keys))
    for path in SERVICES.rglob("*.py"):
        if path.parent.name == "settings":
            continue
        text = path.read_text()
        assert not re.search(r"\b(?:number|flag)\(", text), path
        assert not lookup.search(text), path
