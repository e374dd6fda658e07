"""Exactly-once marks: one per event on one Redis (where one script call
applies every part of an event), one per part on a Redis Cluster (where
each bucket is a call of its own, and a failure may come between them).
Tests without the stores mark run on one Redis.

Posts and their buckets (of 16): p -> b1, 348 -> b2, 9 -> b5."""
import pytest
import redis

from services import contracts, rules
from services.votes import schemas
from services.votes.store import Limits, VoteStorage, connect
from tests.conftest import make_vote


@pytest.fixture
def storage(redis_uri):
    client = connect(redis_uri)
    yield VoteStorage(client, Limits(3600, 3600, 2.0, 3600))
    client.close()


def votes(*post_ids, **fields):
    return [schemas.parse_vote(make_vote(postId=post, **fields)) for post in post_ids]


def counted(storage, *post_ids):
    return [None if c is None else (c["upvote"], c["downvote"])
            for c in storage.counts_many([(post, None) for post in post_ids])]


def marks(redis_client, event_id):
    return [bucket for bucket in range(contracts.DEFAULT_BUCKETS)
            if redis_client.exists(contracts.applied_key(bucket, event_id))]


def test_the_buckets_of_the_posts_here():
    assert [contracts.bucket_of(post) for post in ("p", "348", "9")] == [1, 2, 5]


@pytest.mark.stores
def test_an_event_over_three_buckets_leaves_its_marks(storage, redis_client, redis_store):
    assert tuple(storage.apply("e1", votes("9", "348", "p"))) == (3, 0, 0)
    if redis_store == "single":  # one, in the lowest bucket
        assert marks(redis_client, "e1") == [1]
        assert 3590 < redis_client.ttl("votes:{b1}:applied:e1") <= 3600
    else:  # one per part
        assert marks(redis_client, "e1") == [1, 2, 5]
    assert tuple(storage.apply("e1", votes("9", "348", "p"))) == (0, 0, 0)
    assert counted(storage, "p", "348", "9") == [(1, 0)] * 3


@pytest.mark.parametrize("redis_store", ["cluster"], indirect=True)
def test_a_retry_applies_only_the_parts_still_missing(storage):
    """On a cluster: an event whose part in one bucket was applied before
    a failure; the retry applies the other part, and nothing twice."""
    storage.apply("e1", votes("348"))  # as if the failure came after this part
    assert tuple(storage.apply("e1", votes("348", "9"))) == (1, 0, 0)
    assert tuple(storage.apply("e1", votes("348", "9"))) == (0, 0, 0)
    assert counted(storage, "348", "9") == [(1, 0), (1, 0)]


def test_a_mark_of_any_bucket_of_the_event_counts(storage, redis_client):
    """Events applied by 1.0.0 on one server have a mark in each bucket of
    their parts: any of them means the whole event was applied, and the
    replay rewrites the one it found, keeping its TTL."""
    redis_client.set("votes:{b5}:applied:old", "1", ex=100)
    assert tuple(storage.apply("old", votes("p", "9"))) == (0, 0, 0)
    assert counted(storage, "p", "9") == [None, None]
    assert marks(redis_client, "old") == [5]
    assert 90 < redis_client.ttl("votes:{b5}:applied:old") <= 100


def test_the_mark_is_placed_by_the_events_votes_not_by_its_conflicts(
        storage, redis_client):
    """A keyed vote in the event's lowest bucket that is a conflict when
    the event comes again (its claim expired and another request took the
    key): the event is still found applied, and nothing counts twice."""
    key = rules.key_id("k-1")
    keyed = schemas.parse_vote(make_vote(postId="p", voteId=key, key=key,
                                         fp=rules.fingerprint([("p", 1, None)])))
    event = [keyed] + votes("9")
    assert tuple(storage.apply("e1", event)) == (2, 0, 0)
    assert marks(redis_client, "e1") == [1]
    claim = contracts.claim_key(key)
    redis_client.set(claim, rules.fingerprint([("q", 1, None)]))  # another request's
    assert tuple(storage.apply("e1", event)) == (0, 0, 1)
    assert counted(storage, "p", "9") == [(1, 0), (1, 0)]


@pytest.mark.stores
def test_an_event_twice_in_one_call_counts_once(storage, redis_client):
    assert [tuple(a) for a in storage.apply_many(
        [("e1", votes("9", "348")), ("e1", votes("9", "348"))])] == [(2, 0, 0), (0, 0, 0)]
    assert counted(storage, "348", "9") == [(1, 0), (1, 0)]


def test_a_call_that_fails_leaves_no_mark(storage, redis_client):
    redis_client.set(contracts.post_key("9"), "something else")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        storage.apply("e1", votes("p", "9"))
    assert marks(redis_client, "e1") == []
    assert counted(storage, "p") == [None]
