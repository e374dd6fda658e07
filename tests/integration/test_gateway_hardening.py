"""What a hostile page or client meets at a real gateway (both services,
real RabbitMQ and Redis): state-changing GETs that a deployment turns off
(VOTE_BY_GET), the live page's Content-Security-Policy, nosniff on every
answer, and an Idempotency-Key reused with another createdAt."""
import base64
import hashlib
import re

import pytest

from services import contracts
from services.gateway import page
from tests.integration.test_pipeline import counts, wait_for_counts

GET_OFF = {"error": "METHOD_NOT_ALLOWED",
           "message": "GET /vote is turned off here (VOTE_BY_GET): POST the vote"}


@pytest.fixture
def no_vote_by_get(config):
    config["VOTE_BY_GET"] = False
    return config


def test_vote_by_get_off_refuses_get_and_queues_nothing(no_vote_by_get, services,
                                                        web_session, redis_client):
    for query in ("postId=348&score=1", "postId=348&score=-1&voterId=ann",
                  "postId=bad id&score=7"):
        response = web_session.get("/vote?" + query,
                                   headers={"Idempotency-Key": "k-" + query[:12]})
        assert (response.status_code, response.json()) == (405, GET_OFF)
        assert response.headers["Allow"] == "POST"
    assert web_session.post("/vote", json={"postId": "348", "score": 1}).status_code == 202
    assert web_session.post("/vote", data={"postId": "348", "score": "1"}).status_code == 202
    expected = {"348": counts("348", 2, 0)}
    assert wait_for_counts(web_session, expected) == expected
    # no other post, no voter: the refused GETs left nothing behind
    assert redis_client.keys("votes:*:post:*") == [contracts.post_key("348")]
    assert redis_client.keys("votes:*:voters:*") == []


def test_vote_by_get_is_on_by_default(services, web_session):
    assert web_session.get("/vote?postId=348&score=1").status_code == 202
    expected = {"348": counts("348", 1, 0)}
    assert wait_for_counts(web_session, expected) == expected


def inline_hashes(html, tag):
    return ["'sha256-{}'".format(base64.b64encode(hashlib.sha256(block).digest()).decode())
            for block in re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), html, re.DOTALL)]


def test_the_live_page_sends_a_content_security_policy(services, web_session):
    response = web_session.get("/")
    assert response.status_code == 200
    html = page.PAGE_PATH.read_bytes()
    assert response.content == html
    scripts, styles = inline_hashes(html, b"script"), inline_hashes(html, b"style")
    assert (len(scripts), len(styles)) == (1, 1)
    assert response.headers["Content-Security-Policy"] == "; ".join([
        "default-src 'self'", "script-src " + scripts[0], "style-src " + styles[0],
        "object-src 'none'", "base-uri 'none'", "form-action 'self'",
        "frame-ancestors 'none'"])
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_every_answer_says_nosniff(services, web_session):
    answers = [
        web_session.get("/health"),
        web_session.get("/vote?postId=348&score=1"),
        web_session.get("/vote?postId=348&score=9"),
        web_session.get("/vote-counts?postId=nobody"),
        web_session.get("/no-such-page"),
        web_session.delete("/vote"),
        web_session.get("/openapi.json"),
        web_session.get("/metrics"),
        web_session.get("/posts/top"),
    ]
    assert [a.status_code for a in answers] == [200, 202, 400, 404, 404, 405, 200, 200, 200]
    assert [a.headers.get("X-Content-Type-Options") for a in answers] == ["nosniff"] * 9
    with web_session.get("/stream?postId=348", stream=True) as stream:
        assert (stream.status_code, stream.headers["X-Content-Type-Options"]) == (
            200, "nosniff")


def test_an_idempotency_key_reused_with_another_created_at_is_refused(
        services, web_session):
    key = {"Idempotency-Key": "order-17"}
    vote = {"postId": "348", "score": 1, "createdAt": 1_700_000_000}
    first = web_session.post("/vote", json=vote, headers=key)
    assert first.status_code == 202
    again = web_session.post("/vote", json=vote, headers=key)
    assert (again.status_code, again.json()) == (202, first.json())
    for other in ({**vote, "createdAt": 1_700_000_001}, {"postId": "348", "score": 1}):
        response = web_session.post("/vote", json=other, headers=key)
        assert (response.status_code, response.json()) == (422, {
            "error": "IDEMPOTENCY_KEY_REUSED",
            "message": "this Idempotency-Key was used for another request"})
    # and the other way round: a key first used without createdAt
    key = {"Idempotency-Key": "order-18"}
    assert web_session.post("/vote", json={"postId": "349", "score": 1},
                            headers=key).status_code == 202
    response = web_session.post("/vote", json={"postId": "349", "score": 1, "createdAt": 0},
                                headers=key)
    assert response.status_code == 422
    expected = {"348": counts("348", 1, 0), "349": counts("349", 1, 0)}
    assert wait_for_counts(web_session, expected) == expected
