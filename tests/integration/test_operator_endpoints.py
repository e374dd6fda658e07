"""/metrics and /ready off the public port: on OPERATOR_ADDRESS, or
behind OPERATOR_TOKEN; with neither, public as before."""
import requests

from services.gateway.service import GatewayService
from services.votes.service import VotesService
from tests.conftest import find_free_port

NOT_FOUND = {"error": "NOT_FOUND", "message": "no such resource"}
TOKEN_REQUIRED = {"error": "OPERATOR_TOKEN_REQUIRED",
                  "message": "this needs the operator's bearer token"}
READY = {"status": "ready", "checks": {
    "broker": "ok", "votes": "ok", "redis": "ok",
    "queue": {"waiting": 0, "consumers": 1}}}


def start(runner_factory, config, **settings):
    config.update(settings)
    runner_factory(config, GatewayService, VotesService).start()


def test_operator_address(runner_factory, config, web_session):
    address = "127.0.0.1:{}".format(find_free_port())
    start(runner_factory, config, OPERATOR_ADDRESS=address)
    for path in ("/metrics", "/ready"):
        response = web_session.get(path)
        assert (response.status_code, response.json()) == (404, NOT_FOUND)
    response = web_session.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    operator = "http://{}".format(address)
    response = requests.get(operator + "/metrics", timeout=10)
    assert response.status_code == 200
    assert "gateway_votes_accepted_total" in response.text
    response = requests.get(operator + "/ready", timeout=10)
    assert (response.status_code, response.json()) == (200, READY)
    response = requests.get(operator + "/health", timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    response = requests.get(operator + "/vote?postId=1&score=1", timeout=10)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_operator_token(runner_factory, config, web_session):
    start(runner_factory, config, OPERATOR_TOKEN="s3cret-operator")
    for path in ("/metrics", "/ready"):
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Basic s3cret-operator"}):
            response = web_session.get(path, headers=headers)
            assert (response.status_code, response.json()) == (401, TOKEN_REQUIRED)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    good = {"Authorization": "Bearer s3cret-operator"}
    response = web_session.get("/metrics", headers=good)
    assert response.status_code == 200
    assert "gateway_votes_accepted_total" in response.text
    response = web_session.get("/ready", headers=good)
    assert (response.status_code, response.json()) == (200, READY)
    response = web_session.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_operator_address_with_token(runner_factory, config):
    address = "127.0.0.1:{}".format(find_free_port())
    start(runner_factory, config, OPERATOR_ADDRESS=address,
          OPERATOR_TOKEN="s3cret-operator")
    url = "http://{}/metrics".format(address)
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.json()) == (401, TOKEN_REQUIRED)
    response = requests.get(url, timeout=10, headers={
        "Authorization": "Bearer s3cret-operator"})
    assert response.status_code == 200
