"""/metrics and /ready off the public port: on OPERATOR_ADDRESS, or
behind OPERATOR_TOKEN; with neither, public as before. PUT
/posts/<postId>, the operator's write, always needs OPERATOR_TOKEN."""
import time

import requests

from services import contracts
from services.gateway.service import GatewayService
from services.votes.service import VotesService
from tests.conftest import HEALTH_OK, find_free_port

NOT_FOUND = {"error": "NOT_FOUND", "message": "no such resource"}
TOKEN_REQUIRED = {"error": "OPERATOR_TOKEN_REQUIRED",
                  "message": "this needs the operator's bearer token"}
READY = {"status": "ready", "checks": {
    "broker": "ok", "votes": "ok", "redis": "ok", "durability": "unreplicated",
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
    assert (response.status_code, response.json()) == (200, HEALTH_OK)
    operator = "http://{}".format(address)
    response = requests.get(operator + "/metrics", timeout=10)
    assert response.status_code == 200
    assert "gateway_votes_accepted_total" in response.text
    response = requests.get(operator + "/ready", timeout=10)
    assert (response.status_code, response.json()) == (200, READY)
    response = requests.get(operator + "/health", timeout=10)
    assert (response.status_code, response.json()) == (200, HEALTH_OK)
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
    assert (response.status_code, response.json()) == (200, HEALTH_OK)


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


TOKEN = "s3cret-operator"
GOOD = {"Authorization": "Bearer " + TOKEN}
TOKEN_NOT_SET = {"error": "OPERATOR_TOKEN_NOT_SET", "message": (
    "this is an operator action: it is refused until OPERATOR_TOKEN is set")}


def counted(web_session, post, up):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = web_session.get("/vote-counts", params={"postId": post})
        if response.status_code == 200 and response.json()["upvote"] == up:
            return
        time.sleep(0.05)
    raise AssertionError("post {} not counted".format(post))


def created_at(redis_client, post):
    return redis_client.hget(contracts.post_key(post), "createdAt")


def test_put_post_is_refused_while_no_operator_token_is_set(
        runner_factory, config, web_session, redis_client):
    start(runner_factory, config)
    assert web_session.get("/vote?postId=p1&score=1").status_code == 202
    counted(web_session, "p1", 1)
    before = created_at(redis_client, "p1")
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = web_session.put("/posts/p1", json={"createdAt": 0}, headers=headers)
        assert (response.status_code, response.json()) == (403, TOKEN_NOT_SET)
    assert created_at(redis_client, "p1") == before
    # the reads stay public while neither setting is given, as before
    assert web_session.get("/metrics").status_code == 200


def test_put_post_needs_the_operator_token_and_creates_no_post(
        runner_factory, config, web_session, redis_client):
    start(runner_factory, config, OPERATOR_TOKEN=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
        response = web_session.put("/posts/made-up", json={"createdAt": 0}, headers=headers)
        assert (response.status_code, response.json()) == (401, TOKEN_REQUIRED)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # a made-up id: 404, and no key written (it would never expire)
    for post in ("made-up", "also-made-up"):
        response = web_session.put("/posts/" + post, json={"createdAt": 1_600_000_000},
                                   headers=GOOD)
        assert (response.status_code, response.json()) == (
            404, {"error": "POST_NOT_FOUND", "message": "post {} has no votes".format(post)})
    assert redis_client.keys("*") == []
    # a post with votes: its time is set
    assert web_session.get("/vote?postId=p1&score=1").status_code == 202
    counted(web_session, "p1", 1)
    response = web_session.put("/posts/p1", json={"createdAt": "2020-09-13T12:26:40Z"},
                               headers=GOOD)
    assert (response.status_code, response.json()) == (
        200, {"postId": "p1", "createdAt": 1_600_000_000})
    assert created_at(redis_client, "p1") == "1600000000"


def test_put_post_moves_to_the_operator_address(runner_factory, config, web_session,
                                                redis_client):
    address = "127.0.0.1:{}".format(find_free_port())
    start(runner_factory, config, OPERATOR_ADDRESS=address, OPERATOR_TOKEN=TOKEN)
    assert web_session.get("/vote?postId=p1&score=1").status_code == 202
    counted(web_session, "p1", 1)
    response = web_session.put("/posts/p1", json={"createdAt": 0}, headers=GOOD)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    url = "http://{}/posts/p1".format(address)
    response = requests.put(url, json={"createdAt": 0}, timeout=10)
    assert (response.status_code, response.json()) == (401, TOKEN_REQUIRED)
    response = requests.put(url, json={"createdAt": 1_600_000_000}, headers=GOOD, timeout=10)
    assert (response.status_code, response.json()) == (
        200, {"postId": "p1", "createdAt": 1_600_000_000})
    assert created_at(redis_client, "p1") == "1600000000"


def test_put_post_on_the_operator_address_still_needs_a_token(runner_factory, config):
    address = "127.0.0.1:{}".format(find_free_port())
    start(runner_factory, config, OPERATOR_ADDRESS=address)
    response = requests.put("http://{}/posts/p1".format(address), json={"createdAt": 0},
                            timeout=10)
    assert (response.status_code, response.json()) == (403, TOKEN_NOT_SET)
