"""CORS (services.platform.cors) on a real gateway: preflight and actual
requests from an allowed and from a refused origin, and CORS off."""
import pytest

from services.gateway.service import GatewayService
from tests.conftest import HEALTH_OK

FORUM = "https://forum.example"
ELSEWHERE = "https://elsewhere.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}
PREFLIGHT_ANSWER = {
    "Access-Control-Allow-Origin": FORUM,
    "Access-Control-Allow-Methods": "GET, POST, PUT",
    "Access-Control-Allow-Headers":
        "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id",
    "Access-Control-Max-Age": "600",
}
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers", "Access-Control-Max-Age",
                "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers")


def cors_headers(response):
    return {name: response.headers[name] for name in CORS_HEADERS
            if name in response.headers}


@pytest.fixture
def gateway(container_factory, config):
    def start(**settings):
        config.update(settings)
        container_factory(GatewayService, config).start()
    return start


def test_preflight_and_request_from_an_allowed_origin(gateway, web_session):
    gateway(CORS_ORIGINS="{} https://other.example".format(FORUM))
    response = web_session.options("/vote", headers=dict(PREFLIGHT, Origin=FORUM))
    assert (response.status_code, response.content) == (204, b"")
    assert cors_headers(response) == PREFLIGHT_ANSWER
    assert response.headers["Vary"] == "Origin"

    response = web_session.post("/vote", json={"postId": "1", "score": 1},
                                headers={"Origin": FORUM})
    assert response.status_code == 202
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": FORUM,
        "Access-Control-Expose-Headers": "Retry-After, RateLimit-Limit, "
        "RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy, X-Request-Id",
    }
    assert response.headers["Vary"] == "Origin"
    # errors carry them too, so that a page can read them
    response = web_session.get("/vote?postId=1&score=2", headers={"Origin": FORUM})
    assert (response.status_code, response.json()["error"]) == (400, "VALIDATION_ERROR")
    assert response.headers["Access-Control-Allow-Origin"] == FORUM


def test_preflight_of_the_operators_put(gateway, web_session):
    """PUT /posts/<postId> from an operator's page on a listed origin: the
    browser asks first for PUT with Authorization."""
    gateway(CORS_ORIGINS=FORUM)
    response = web_session.options("/posts/348", headers={
        "Origin": FORUM, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert (response.status_code, response.content) == (204, b"")
    assert cors_headers(response) == PREFLIGHT_ANSWER
    # the answer is readable by the page: here, that no token is set
    response = web_session.put("/posts/348", json={"createdAt": 0},
                               headers={"Origin": FORUM, "Authorization": "Bearer x"})
    assert (response.status_code, response.json()["error"]) == (403, "OPERATOR_TOKEN_NOT_SET")
    assert response.headers["Access-Control-Allow-Origin"] == FORUM


def test_refused_origin(gateway, web_session):
    gateway(CORS_ORIGINS=FORUM)
    response = web_session.options("/vote", headers=dict(PREFLIGHT, Origin=ELSEWHERE))
    assert (response.status_code, response.json()) == (403, {
        "error": "CORS_ORIGIN_REFUSED",
        "message": "this origin may not call the API from a browser"})
    assert cors_headers(response) == {}
    assert response.headers["Vary"] == "Origin"
    # an actual request is answered, without CORS headers: the browser
    # keeps the answer from the page
    response = web_session.get("/health", headers={"Origin": ELSEWHERE})
    assert (response.status_code, response.json()) == (200, HEALTH_OK)
    assert cors_headers(response) == {}
    assert response.headers["Vary"] == "Origin"


def test_credentials_and_max_age(gateway, web_session):
    gateway(CORS_ORIGINS=FORUM, CORS_ALLOW_CREDENTIALS=True, CORS_MAX_AGE=60)
    response = web_session.options("/vote-counts", headers=dict(
        PREFLIGHT, Origin=FORUM))
    assert response.status_code == 204
    assert cors_headers(response)["Access-Control-Allow-Credentials"] == "true"
    assert cors_headers(response)["Access-Control-Max-Age"] == "60"


def test_cors_off_is_as_before(gateway, web_session):
    gateway()
    response = web_session.options("/vote", headers=dict(PREFLIGHT, Origin=FORUM))
    assert (response.status_code, response.json()) == (405, {
        "error": "METHOD_NOT_ALLOWED", "message": "method not allowed"})
    response = web_session.get("/health", headers={"Origin": FORUM})
    assert cors_headers(response) == {}
    assert "Vary" not in response.headers
