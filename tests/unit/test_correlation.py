"""Request ids (services.platform.correlation), the headers a grouping
publisher gives a message, and the TLS settings every AMQP connection of
the project's own is made with (amqp_layer.connection)."""
import re

import pytest

from services.platform import amqp_layer, correlation
from services.platform.publisher import ConfirmedPublisher

FRESH = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("given", ["test-123", "a" * 128, "!~", "0"])
def test_a_valid_client_id_is_kept(given):
    environ = {"HTTP_X_REQUEST_ID": given}
    assert correlation.request_id(environ) == given
    assert correlation.request_id(environ) == given  # the same on each call


@pytest.mark.parametrize("given", [None, "", "two words", "a" * 129, "tab\there",
                                   "esc\x1b[31m", "caf\u00e9", "new\nline"])
def test_any_other_value_is_replaced_by_a_fresh_id(given):
    environ = {} if given is None else {"HTTP_X_REQUEST_ID": given}
    made = correlation.request_id(environ)
    assert FRESH.fullmatch(made)
    assert correlation.request_id(environ) == made


def test_ids_of_a_message_keep_only_valid_ids():
    assert correlation.ids_of(None) == []
    assert correlation.ids_of({}) == []
    assert correlation.ids_of({"x-request-ids": "not-a-list"}) == []
    assert correlation.ids_of({"x-request-ids": [
        "ok-1", 7, "bad id", "\x1b[2J", "x" * 129, "ok-2"]}) == ["ok-1", "ok-2"]


def test_a_group_message_names_every_tagged_request_in_order():
    groups = [correlation.Tagged([{"voteId": "a"}], "r1"), [{"voteId": "b"}],
              correlation.Tagged([{"voteId": "c"}, {"voteId": "d"}], "r2")]
    assert ConfirmedPublisher.headers(groups) == {"x-request-ids": ["r1", "r2"]}
    assert ConfirmedPublisher.headers([[{"voteId": "b"}]]) is None
    assert len(groups[2]) == 2  # still the list of its items, for weighing


def test_connections_take_nameko_s_tls_settings_from_a_config():
    ssl = {"ca_certs": "/tls/ca.pem", "certfile": "/tls/c.pem", "keyfile": "/tls/c.key",
           "server_hostname": None}
    config = {"AMQP_URI": "amqps://u:p@broker:5671/", "AMQP_SSL": ssl,
              "LOGIN_METHOD": "EXTERNAL"}
    connection = amqp_layer.connection(config)
    assert connection.ssl == ssl and connection.ssl is not ssl  # a copy
    assert connection.login_method == "EXTERNAL"
    plain = amqp_layer.connection({"AMQP_URI": "amqp://u:p@broker:5672/", "AMQP_SSL": None})
    assert not plain.ssl
    assert not amqp_layer.connection("amqp://u:p@broker:5672/").ssl
