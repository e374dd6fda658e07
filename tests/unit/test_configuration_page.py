"""docs/configuration.md and config.yml name the same settings, by the
environment variables that set them, with the same defaults."""
import re

from harness.process import ROOT

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
