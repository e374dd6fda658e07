"""One vote per voter per post, and the leaderboard, end to end."""
import time

import pytest

from tests.integration.test_pipeline import counts

pytestmark = pytest.mark.stores


def settle(web_session, post, voter, expected, timeout=20):
    """Poll until the post shows `expected` counts with myVote (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        got = web_session.get("/vote-counts", params={"postId": post, "voterId": voter})
        body = got.json() if got.status_code == 200 else got.status_code
        if body == expected or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def with_my_vote(post, up, down, mine):
    body = counts(post, up, down)
    body["myVote"] = mine
    return body


def test_vote_repeat_switch_retract(services, web_session):
    steps = [
        # (voter, score) -> counts after, and what that voter sees
        (("ann", 1), (1, 0), 1),
        (("ann", 1), (1, 0), 1),       # same vote again: no change
        (("bob", 1), (2, 0), 1),
        (("ann", -1), (1, 1), -1),     # switch sides
        (("ann", 0), (1, 0), 0),       # retract
        (("ann", 0), (1, 0), 0),       # retract again: no change
        (("ann", -1), (1, 1), -1),
    ]
    for (voter, score), (up, down), mine in steps:
        response = web_session.get("/vote", params={
            "postId": "348", "score": score, "voterId": voter})
        assert response.status_code == 202
        assert response.json()["voterId"] == voter
        assert settle(web_session, "348", voter, with_my_vote("348", up, down, mine)) \
            == with_my_vote("348", up, down, mine)
    # anonymous votes still add up beside the voters'
    web_session.get("/vote?postId=348&score=1")
    assert settle(web_session, "348", "carol", with_my_vote("348", 2, 1, 0)) == \
        with_my_vote("348", 2, 1, 0)


def test_leaderboard_after_a_mixed_stream(services, web_session):
    plan = {"a": (3, 0), "b": (1, 1), "c": (0, 2), "d": (3, 0), "e": (5, 1)}
    votes = []
    for post, (up, down) in plan.items():
        votes += [{"postId": post, "score": 1}] * up + [{"postId": post, "score": -1}] * down
    votes += [{"postId": "b", "score": 1, "voterId": "v"},
              {"postId": "b", "score": 0, "voterId": "v"}]  # nets to nothing
    assert web_session.post("/votes", json={"votes": votes}).status_code == 202

    expected = {"posts": [counts("e", 5, 1), counts("a", 3, 0), counts("d", 3, 0),
                          counts("b", 1, 1), counts("c", 0, 2)]}
    deadline = time.monotonic() + 20
    while web_session.get("/posts/top").json() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web_session.get("/posts/top").json() == expected
    assert web_session.get("/posts/top?limit=2").json() == {"posts": expected["posts"][:2]}
