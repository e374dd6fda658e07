"""The exception -> HTTP answer table of the gateway, through the platform's
http entrypoint."""
import json

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge

from services.gateway.exceptions import (
    ERRORS,
    BrokerUnavailable,
    PostNotFound,
    ServiceUnavailable,
    ValidationError,
)
from services.platform import web


def response_for_exception(exc):
    return web.response_for_exception(exc, ERRORS)


@pytest.mark.parametrize("exc, status, body, extra_headers", [
    (ValidationError("score: is required"), 400,
     {"error": "VALIDATION_ERROR", "message": "score: is required"}, {}),
    (PostNotFound("post 1 has no votes"), 404,
     {"error": "POST_NOT_FOUND", "message": "post 1 has no votes"}, {}),
    (BrokerUnavailable("RabbitMQ is unavailable"), 503,
     {"error": "BROKER_UNAVAILABLE", "message": "RabbitMQ is unavailable"},
     {"Retry-After": "1"}),
    (ServiceUnavailable("slow"), 503,
     {"error": "SERVICE_UNAVAILABLE", "message": "slow"}, {"Retry-After": "1"}),
    (NotFound(), 404, {"error": "NOT_FOUND", "message": "no such resource"}, {}),
    (MethodNotAllowed(["POST", "GET"]), 405,
     {"error": "METHOD_NOT_ALLOWED", "message": "method not allowed"},
     {"Allow": "GET, POST"}),
    (RequestEntityTooLarge(), 413,
     {"error": "PAYLOAD_TOO_LARGE",
      "message": "request body is larger than 1048576 bytes"}, {}),
    (KeyError("internal detail"), 500,
     {"error": "INTERNAL_ERROR", "message": "unexpected error"}, {}),
])
def test_exception_answers(exc, status, body, extra_headers):
    response = response_for_exception(exc)
    assert response.status_code == status
    assert json.loads(response.get_data()) == body
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    for name, value in extra_headers.items():
        assert response.headers[name] == value
    if status != 503:
        assert "Retry-After" not in response.headers


def test_subclasses_match_by_isinstance():
    class Stricter(ValidationError):
        pass

    assert response_for_exception(Stricter("x")).status_code == 400


def test_unexpected_error_is_logged_with_traceback(caplog):
    try:
        raise RuntimeError("secret internals")
    except RuntimeError as exc:
        response = response_for_exception(exc)
    assert b"secret" not in response.get_data()
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info[1].args == ("secret internals",)
