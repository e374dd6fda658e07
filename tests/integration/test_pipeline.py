"""Both services in one runner, real HTTP, real RabbitMQ and Redis."""
import collections
import random
import time

import eventlet
import pytest

from services import contracts

pytestmark = pytest.mark.stores


def wait_for_counts(web_session, expected, timeout=30):
    """Poll /vote-counts until every post shows `expected` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {post: web_session.get("/vote-counts", params={"postId": post})
                for post in expected}
        got = {post: (r.json() if r.status_code == 200 else r.status_code)
               for post, r in seen.items()}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def counts(post, up, down):
    return {"postId": post, "upvote": up, "downvote": down, "score": up - down}


def expected_counts(plan):
    """[(post, score), ...] -> the counts each post must end with."""
    tally = collections.defaultdict(lambda: [0, 0])
    for post, score in plan:
        tally[post][0 if score == 1 else 1] += 1
    return {post: counts(post, up, down) for post, (up, down) in tally.items()}


def test_seed_examples(services, web_session):
    assert web_session.get("/vote-counts?postId=348").status_code == 404
    for score in ("1", "1", "-1"):
        assert web_session.get("/vote?postId=348&score=" + score).status_code == 202
    assert wait_for_counts(web_session, {"348": counts("348", 2, 1)}) == {
        "348": counts("348", 2, 1)}


def test_votes_on_many_posts_are_exact(services, web_session, redis_client):
    rng = random.Random(348)
    plan = [("p{}".format(rng.randrange(12)), rng.choice((1, -1))) for _ in range(300)]
    for post, score in plan:
        response = web_session.post("/vote", json={"postId": post, "score": score})
        assert response.status_code == 202

    want = expected_counts(plan)
    assert wait_for_counts(web_session, want) == want
    assert len(set(redis_client.scan_iter(contracts.POST_KEY_PATTERN))) == len(want)


def test_2000_concurrent_votes_on_50_posts(services, web_session):
    posts = ["post-{}".format(i) for i in range(50)]
    plan = [(posts[i % 50], 1 if i % 5 else -1) for i in range(2000)]
    pool = eventlet.GreenPool(100)

    def cast(vote):
        post, score = vote
        return web_session.get("/vote", params={"postId": post, "score": score}).status_code

    statuses = collections.Counter(pool.imap(cast, plan))
    assert statuses == {202: 2000}

    want = expected_counts(plan)
    assert wait_for_counts(web_session, want, timeout=60) == want


def test_batch_of_1000(services, web_session):
    plan = [("b{}".format(i % 10), 1 if i % 7 else -1) for i in range(1000)]
    response = web_session.post("/votes", json={
        "votes": [{"postId": post, "score": score} for post, score in plan]})
    assert (response.status_code, response.json()) == (
        202, {"success": True, "accepted": 1000})
    want = expected_counts(plan)
    assert sum(c["upvote"] + c["downvote"] for c in want.values()) == 1000
    assert wait_for_counts(web_session, want) == want


def test_refused_batch_changes_nothing(services, web_session, redis_client):
    votes = [{"postId": "r1", "score": 1}] * 10 + [{"postId": "r1", "score": 3}]
    response = web_session.post("/votes", json={"votes": votes})
    assert response.status_code == 400
    assert response.json()["message"].startswith("votes[10].score:")
    time.sleep(0.5)
    assert web_session.get("/vote-counts?postId=r1").status_code == 404
    assert list(redis_client.scan_iter(contracts.KEY_PREFIX + "*")) == []


def test_concurrent_large_batches_all_answered(services, web_session):
    """Two 600-vote batches never fit one 1,000-vote group: one is carried
    while the other flusher takes the single votes. Every request must get
    its answer, round after round, and every vote must count."""
    plan = []
    pool = eventlet.GreenPool(20)

    def send(request):
        path, body = request
        return web_session.post(path, json=body, timeout=15).status_code

    for round_ in range(8):
        batch_a = [("ga", 1)] * 600
        batch_b = [("gb", -1)] * 600
        singles = [("gs{}".format(round_ % 3), 1)] * 5
        requests_ = [("/votes", {"votes": [{"postId": p, "score": s} for p, s in batch]})
                     for batch in (batch_a, batch_b)]
        requests_ += [("/vote", {"postId": p, "score": s}) for p, s in singles]
        assert list(pool.imap(send, requests_)) == [202] * 7
        plan += batch_a + batch_b + singles

    want = expected_counts(plan)
    assert wait_for_counts(web_session, want, timeout=60) == want
