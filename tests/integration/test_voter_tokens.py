"""Signed voter tokens end to end (both services, real RabbitMQ and Redis):
bad tokens and forged voterIds are refused with 401 and change no count."""
import time

import jwt
import pytest

from tests.integration.test_voters import settle, with_my_vote

SECRET = "a-secret-long-enough-for-hs256-32b"


def token(sub, key=SECRET, aud="votes", exp_in=300, **claims):
    claims.update(sub=sub, aud=aud, exp=int(time.time()) + exp_in)
    return jwt.encode(claims, key, algorithm="HS256")


def bearer(value):
    return {"Authorization": "Bearer " + value}


@pytest.fixture
def config(config):
    config["VOTER_TOKEN_SECRET"] = SECRET
    return config


def test_only_a_valid_token_changes_a_count(services, web_session):
    def my_counts(voter, up, down, mine):
        return settle_with(voter, with_my_vote("348", up, down, mine))

    def settle_with(voter, expected):
        session_headers = bearer(token(voter))
        web_session.headers.update(session_headers)
        try:
            return settle(web_session, "348", voter, expected), expected
        finally:
            for name in session_headers:
                web_session.headers.pop(name)

    vote = {"postId": "348", "score": 1, "voterId": "ann"}
    assert web_session.get("/vote", params=vote, headers=bearer(token("ann"))) \
        .status_code == 202
    got, expected = my_counts("ann", 1, 0, 1)
    assert got == expected

    refused = [
        ({}, "VOTER_TOKEN_MISSING"),
        (bearer(token("ann", exp_in=-10)), "VOTER_TOKEN_EXPIRED"),
        (bearer(token("ann")[:-3] + "AAA"), "VOTER_TOKEN_INVALID"),
        (bearer(token("ann", key="another-secret-long-enough-for-hs256")),
         "VOTER_TOKEN_INVALID"),
        (bearer(token("ann", aud="elsewhere")), "VOTER_TOKEN_WRONG_AUDIENCE"),
        (bearer(token("ann", posts=["1"])), "VOTER_TOKEN_WRONG_POST"),
        (bearer(token("mallory")), "VOTER_TOKEN_WRONG_VOTER"),
    ]
    switch = {"postId": "348", "score": -1, "voterId": "ann"}
    for headers, code in refused:
        for response in [
            web_session.get("/vote", params=switch, headers=headers),
            web_session.post("/votes", json={"votes": [switch]}, headers=headers),
        ]:
            assert response.status_code == 401
            assert response.json()["error"] == code
    # reading ann's own vote needs her token too
    assert web_session.get("/vote-counts", params={
        "postId": "348", "voterId": "ann"}).status_code == 401

    # a later valid vote by bob lands; ann's vote is still the only other one
    assert web_session.post("/votes", json={"votes": [
        {"postId": "348", "score": 1, "voterId": "bob"}]},
        headers=bearer(token("bob"))).status_code == 202
    got, expected = my_counts("bob", 2, 0, 1)
    assert got == expected
    got, expected = my_counts("ann", 2, 0, 1)
    assert got == expected
    # anonymous votes are still taken by default
    assert web_session.get("/vote?postId=348&score=1").status_code == 202
    got, expected = my_counts("ann", 3, 0, 1)
    assert got == expected


def test_a_posts_claim_that_is_not_a_list_of_ids_refuses_the_token(
        services, web_session):
    """"348" is iterable: read as a list it covered posts 3, 4 and 8."""
    invalid = {"error": "VOTER_TOKEN_INVALID",
               "message": "the voter token's posts claim must be a list of post ids"}
    for posts in ("348", [348], ["348", None], ["a b"], {"348": True}):
        headers = bearer(token("ann", posts=posts))
        for post in ("3", "348"):
            vote = {"postId": post, "score": 1, "voterId": "ann"}
            for response in [
                web_session.get("/vote", params=vote, headers=headers),
                web_session.post("/votes", json={"votes": [vote]}, headers=headers),
            ]:
                assert (response.status_code, response.json()) == (401, invalid), posts
    # nothing was queued: the first vote that lands is the only one counted
    vote = {"postId": "3", "score": 1, "voterId": "ann"}
    assert web_session.get("/vote", params=vote, headers=bearer(
        token("ann", posts=["3"]))).status_code == 202
    web_session.headers.update(bearer(token("ann")))
    assert settle(web_session, "3", "ann", with_my_vote("3", 1, 0, 1)) == \
        with_my_vote("3", 1, 0, 1)
    assert settle(web_session, "348", "ann", 404) == 404
