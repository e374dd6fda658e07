"""One error path: the gateway's table alone decides 4xx against 500, and
every error is logged once (no broker: an HTTP-only service on a local
port, logs filtered as config.yml filters them)."""
import logging

import pytest
import requests
from nameko.extensions import DependencyProvider
from nameko.testing.utils import find_free_port

from services.gateway.exceptions import ERRORS, ValidationError
from services.platform.logs import ExpectedErrorsOnOneLine
from services.platform.web import json_http, json_response

http = json_http(ERRORS, label="error-path-test")


class Memo(DependencyProvider):
    """A value in memory that an inline answer may use."""

    def setup(self):
        self.value = "kept"

    def get_dependency(self, worker_ctx):
        return self


def inline_answer(providers, request):
    """/inline?from=copy: answered inline; ?from=bug: raises; else None."""
    kind = request.args.get("from")
    if kind == "copy":
        return json_response(200, {"answer": providers["memo"].value})
    if kind == "bug":
        raise KeyError("inline internals")
    return None


class Service:
    name = "errors"
    memo = Memo()

    @http("GET", "/inline", inline=inline_answer)
    def inline(self, request):
        return json_response(200, {"answer": "worker"})

    @http("GET", "/bad")
    def bad(self, request):
        raise ValidationError("score: is required")

    @http("GET", "/bug")
    def bug(self, request):
        raise KeyError("secret internals")


@pytest.fixture
def base_url(container_factory):
    port = find_free_port()
    container = container_factory(Service, {
        "AMQP_URI": "memory://", "WEB_SERVER_ADDRESS": "127.0.0.1:{}".format(port)})
    container.start()
    return "http://127.0.0.1:{}".format(port)


@pytest.fixture
def logged(caplog):
    """The records at WARNING and above, as config.yml's handler gets them."""
    caplog.handler.addFilter(ExpectedErrorsOnOneLine())
    caplog.set_level(logging.INFO)

    def records():
        return [record for record in caplog.records if record.levelno >= logging.WARNING]
    return records


def test_a_route_may_not_declare_its_own_expected_exceptions():
    with pytest.raises(TypeError, match="the error table decides"):
        http("GET", "/x", expected_exceptions=(KeyError,))(lambda self, request: None)


def test_the_table_is_what_nameko_expects():
    (extension,) = http("GET", "/x")(lambda self, request: None).nameko_entrypoints
    assert extension.expected_exceptions == tuple(
        exc_type for exc_type, _, _ in ERRORS)


def test_a_400_is_logged_once_on_one_line(base_url, logged, caplog):
    response = requests.get(base_url + "/bad", timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "VALIDATION_ERROR", "message": "score: is required"}
    (record,) = logged()
    assert record.levelname == "WARNING" and record.name == "nameko.containers"
    assert record.getMessage().endswith(": score: is required")
    assert record.exc_info is None  # no traceback for a client's mistake
    assert "Traceback" not in caplog.text


def test_an_unexpected_error_is_a_500_logged_once_with_its_traceback(base_url, logged):
    response = requests.get(base_url + "/bug", timeout=5)
    assert response.status_code == 500
    assert response.json() == {"error": "INTERNAL_ERROR", "message": "unexpected error"}
    (record,) = logged()
    assert record.levelname == "ERROR" and record.name == "nameko.containers"
    assert record.exc_info[1].args == ("secret internals",)


def test_an_inline_answer_or_the_worker(base_url, logged):
    """A route's ``inline`` answers what it can without a worker; for
    None the worker answers; an inline answer that fails is logged with
    its traceback, and the worker answers instead of a 500."""
    def answer(query):
        response = requests.get(base_url + "/inline" + query, timeout=5)
        return response.status_code, response.json()

    assert answer("?from=copy") == (200, {"answer": "kept"})
    assert answer("") == (200, {"answer": "worker"})
    assert logged() == []
    assert answer("?from=bug") == (200, {"answer": "worker"})
    (record,) = logged()
    assert record.levelname == "ERROR" and record.name == "services.platform.web"
    assert record.getMessage() == "inline answer of /inline failed; a worker answers"
    assert record.exc_info[1].args == ("inline internals",)
