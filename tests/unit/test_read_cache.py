"""The gateway's copy of recent counts (services/gateway/read_cache.py),
on a clock of the test's own."""
import pytest
from nameko.exceptions import ConfigurationError

from services.gateway.read_cache import CountsCache


def counts(post_id, up, down=0):
    return {"postId": post_id, "upvote": up, "downvote": down, "score": up - down}


@pytest.fixture
def clock():
    return [1000.0]


@pytest.fixture
def cache(clock):
    return CountsCache(ttl=1.0, size=3, clock=lambda: clock[0])


def test_a_read_is_served_for_the_ttl_then_read_again(cache, clock):
    assert cache.get("a") == (False, None)
    cache.put("a", counts("a", 1), stamp=1000.0)
    clock[0] = 1001.0
    assert cache.get("a") == (True, counts("a", 1))
    clock[0] = 1001.001
    assert cache.get("a") == (False, None)
    assert (cache.hits, cache.misses) == (1, 2)


def test_no_votes_is_kept_too(cache):
    cache.put("none", None, stamp=1000.0)
    assert cache.get("none") == (True, None)


def test_the_ttl_runs_from_when_the_read_was_sent(cache, clock):
    clock[0] = 1000.9
    cache.put("a", counts("a", 1), stamp=1000.0)  # a read that took 0.9 s
    clock[0] = 1001.1
    assert cache.get("a") == (False, None)


def test_an_announcement_refreshes_held_posts_only(cache, clock):
    cache.put("a", counts("a", 1), stamp=1000.0)
    clock[0] = 1000.5
    cache.announced([counts("a", 5), counts("b", 2)], at=1000.5)
    assert "b" not in cache.entries
    clock[0] = 1001.4  # within the TTL of the announcement, not of the read
    assert cache.get("a") == (True, counts("a", 5))


def test_an_announcement_from_the_future_counts_as_now(cache, clock):
    cache.put("a", counts("a", 1), stamp=1000.0)
    cache.announced([counts("a", 7)], at=10_000.0)
    assert cache.entries["a"] == (counts("a", 7), 1000.0)
    clock[0] = 1001.001
    assert cache.get("a") == (False, None)


@pytest.mark.parametrize("at", [float("inf"), float("nan"), "1000.5", None, True])
def test_an_announcement_without_a_time_is_ignored(cache, clock, at):
    cache.put("a", counts("a", 1), stamp=1000.0)
    cache.announced([counts("a", 7)], at=at)
    assert cache.get("a") == (True, counts("a", 1))


def test_older_counts_never_replace_newer(cache, clock):
    clock[0] = 1000.7
    cache.put("a", counts("a", 2), stamp=1000.5)
    cache.announced([counts("a", 1)], at=1000.2)  # an announcement that was late
    assert cache.get("a") == (True, counts("a", 2))
    cache.announced([counts("a", 3)], at=1000.7)
    cache.put("a", counts("a", 2), stamp=1000.6)  # a read sent before that one
    assert cache.get("a") == (True, counts("a", 3))


def test_the_least_recently_used_post_goes_first(cache):
    for post in "abc":
        cache.put(post, counts(post, 1), stamp=1000.0)
    assert cache.get("a")[0]  # a is now the most recent
    cache.put("d", counts("d", 1), stamp=1000.0)
    assert sorted(cache.entries) == ["a", "c", "d"]


def test_clear_forgets_everything(cache):
    cache.put("a", counts("a", 1), stamp=1000.0)
    cache.clear()
    assert cache.get("a") == (False, None)


@pytest.mark.parametrize("settings, ttl, size", [
    ({}, 1.0, 20_000),
    ({"READ_CACHE_TTL": 0.25, "READ_CACHE_SIZE": 10}, 0.25, 10),
    ({"READ_CACHE_TTL": 0}, 0, 20_000),
])
def test_settings(settings, ttl, size):
    cache = CountsCache.from_config(settings)
    assert (cache.ttl, cache.size, cache.enabled) == (ttl, size, ttl > 0)


@pytest.mark.parametrize("settings", [
    {"READ_CACHE_TTL": 1.5}, {"READ_CACHE_TTL": -1}, {"READ_CACHE_SIZE": 0},
    {"READ_CACHE_TTL": "soon"},
])
def test_bad_settings_refuse_to_start(settings):
    with pytest.raises(ConfigurationError) as raised:
        CountsCache.from_config(settings)
    assert str(raised.value).startswith("{} must be".format(next(iter(settings))))


def test_a_post_read_late_in_its_life_is_read_again_once(cache, clock):
    cache.put("a", counts("a", 1), stamp=1000.0)
    clock[0] = 1000.5
    assert not cache.due("a")  # half its life: not yet
    clock[0] = 1000.51
    assert cache.due("a")
    assert not cache.due("a")  # due already
    assert not cache.due("b")  # not held: a miss reads it
    reads = []

    def read_many(post_ids):
        reads.append(list(post_ids))
        return [counts(post_id, 2) for post_id in post_ids]
    cache.refresh(read_many)
    assert reads == [["a"]]
    assert (cache.due_posts, cache.refreshing) == ([], set())
    assert cache.entries["a"] == (counts("a", 2), 1000.51)
    assert not cache.due("a")


def test_due_posts_are_read_in_batches(clock):
    cache = CountsCache(ttl=1.0, size=2000, clock=lambda: clock[0])
    for n in range(1200):
        cache.put(str(n), counts(str(n), 1), stamp=1000.0)
    clock[0] = 1000.8
    assert all(cache.due(str(n)) for n in range(1200))
    sizes = []

    def read_many(post_ids):
        sizes.append(len(post_ids))
        return [None] * len(post_ids)
    cache.refresh(read_many)
    assert sizes == [500, 500, 200]
    assert cache.get("7") == (True, None)  # the post lost its votes meanwhile


def test_a_failed_read_leaves_every_due_post_to_run_out(cache, clock):
    for post in "ab":
        cache.put(post, counts(post, 1), stamp=1000.0)
    clock[0] = 1000.8
    assert cache.due("a") and cache.due("b")

    def read_many(post_ids):
        raise ConnectionError("votes service away")
    with pytest.raises(ConnectionError):
        cache.refresh(read_many)
    assert (cache.due_posts, cache.refreshing) == ([], set())
    assert cache.get("a") == (True, counts("a", 1))  # until its TTL ends
    assert cache.due("a")  # and may fall due again


def test_held_answers_a_held_post_within_the_ttl(cache, clock):
    """``held`` (the gateway's answer without a worker): counts of a post
    held within the TTL, due or not; None for a miss or a post with no
    votes (the worker's), with nothing counted."""
    cache.put("a", counts("a", 1), stamp=1000.0)
    cache.put("none", None, stamp=1000.0)
    assert cache.held("a") == counts("a", 1)
    assert cache.held("none") is None  # the 404 is the worker's
    assert cache.held("absent") is None
    assert (cache.hits, cache.misses) == (1, 0)
    clock[0] = 1000.6  # past REFRESH_AT: still answered, and ``due`` says so
    assert cache.held("a") == counts("a", 1)
    assert cache.due("a") is True
    assert cache.held("a") == counts("a", 1)
    assert cache.due("a") is False  # due already
    clock[0] = 1001.001
    assert cache.held("a") is None  # run out
    assert (cache.hits, cache.misses) == (3, 0)


def test_held_keeps_the_lru_order(cache):
    for post in "abc":
        cache.put(post, counts(post, 1), stamp=1000.0)
    assert cache.held("a") == counts("a", 1)
    cache.put("d", counts("d", 1), stamp=1000.0)
    assert list(cache.entries) == ["c", "a", "d"]
