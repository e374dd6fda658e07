"""docs/configuration.md, config.yml and the settings table in code
(services/settings/table.py) name the same settings, by the environment
variables that set them, with the same defaults."""
import os
import re
from unittest import mock

import yaml
from nameko.cli.main import setup_yaml_parser

from harness.process import ROOT
from services import settings
from services.settings import table

SUBSTITUTION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::([^}]*))?\}")
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.M)


def config_defaults():
    """{variable: default or None} from config.yml's ${VARIABLE:default}."""
    text = "\n".join(line.split(" #")[0] for line in
                     (ROOT / "config.yml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    found = {}
    for name, default in SUBSTITUTION.findall(text):
        assert found.setdefault(name, default or None) == (default or None), name
    return found


def page_defaults():
    """{variable: default or None} from the page's table: `value`, or unset."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("| variable | default | what |", 1)[1].split("\n\n", 1)[0]
    found = {}
    for name, cell in ROW.findall(table):
        cell = cell.strip()
        assert name not in found, "{} is in the table twice".format(name)
        if cell == "unset":
            found[name] = None
        else:
            assert re.fullmatch(r"`[^`]+`", cell), "{}: default {!r}".format(name, cell)
            found[name] = cell.strip("`")
    return found


def test_the_page_lists_every_setting_of_config_yml_and_no_other():
    assert sorted(page_defaults()) == sorted(config_defaults())


def test_the_page_gives_each_settings_default_as_config_yml_has_it():
    config = config_defaults()
    assert {name: default for name, default in page_defaults().items()} == config


def test_the_reading_finds_what_it_should():
    # a guard on the two parsers above: both see settings of every kind
    config, page = config_defaults(), page_defaults()
    assert config["AMQP_URI"] == page["AMQP_URI"] == "amqp://guest:guest@localhost:5672/"
    assert config["REDIS_MIN_REPLICAS"] is page["REDIS_MIN_REPLICAS"] is None
    assert config["OPERATOR_TOKEN"] is page["OPERATOR_TOKEN"] is None
    assert config["COUNTS_FLUSH_INTERVAL"] == page["COUNTS_FLUSH_INTERVAL"] == "0.25"
    assert len(config) >= 50


# the third side: the settings table in code (services/settings/table.py)

def table_defaults():
    """{variable: default as config.yml writes it, or None}"""
    def written(value):
        if value is None:
            return None
        return str(value).lower() if isinstance(value, bool) else str(value)
    return {item.variable: written(item.default) for item in table.SETTINGS}


def load_config_yml(environ):
    """config.yml as a service loads it, with exactly ``environ`` set."""
    with mock.patch.dict(os.environ, environ, clear=True):
        setup_yaml_parser()
        return yaml.safe_load((ROOT / "config.yml").read_text())


def test_the_code_declares_every_setting_of_config_yml_and_no_other():
    assert sorted(table_defaults()) == sorted(config_defaults())


def test_the_code_gives_each_settings_default_as_config_yml_and_the_page_have_it():
    assert table_defaults() == config_defaults() == page_defaults()


def test_each_variable_sets_the_setting_the_code_reads_from_it():
    """The variable the table names is the one config.yml substitutes at
    the setting's place: set each to a mark, and each place holds its own."""
    config = load_config_yml({item.variable: "mark-" + item.variable
                              for item in table.SETTINGS})
    assert {item.variable: settings.lookup(config, item.path) for item in table.SETTINGS} \
        == {item.variable: "mark-" + item.variable for item in table.SETTINGS}


def test_config_yml_with_no_variable_set_is_the_codes_defaults():
    config = load_config_yml({})
    assert repr(settings.Settings(config)) == repr(settings.Settings({}))


def test_the_page_says_which_settings_may_come_from_a_file():
    """Each credential's row names its <VARIABLE>_FILE, and no other row does."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {match.group(1): match.group(0) for match in re.finditer(
        r"^\| `([A-Z][A-Z0-9_]*)` \|.*$", text, re.M)}
    with_file = {name for name, row in rows.items() if "`{}_FILE`".format(name) in row}
    assert with_file == {item.variable for item in table.SETTINGS if item.secret}
