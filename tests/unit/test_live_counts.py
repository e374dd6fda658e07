"""The change feed with fakes (no broker, no Redis): the votes side's
coalescing (services.votes.feed) and the gateway's fan-out
(services.gateway.live)."""
import eventlet
import pytest

from services.gateway.live import COUNTS, TOP, Closed, Fanout
from services.votes.feed import Coalescer, CountsFeed


def counts(post_id, up=0, down=0):
    return {"postId": post_id, "upvote": up, "downvote": down, "score": up - down}


class Store:
    """Fake counts: post id -> (up, down)."""

    def __init__(self):
        self.posts = {}
        self.reads = []
        self.fail = None

    def read_counts(self, post_ids):
        self.reads.append(list(post_ids))
        if self.fail:
            raise self.fail
        return [counts(p, *self.posts[p]) if p in self.posts else None
                for p in post_ids]

    def read_top(self):
        ranked = sorted(self.posts, key=lambda p: (-(self.posts[p][0] - self.posts[p][1]), p))
        return [counts(p, *self.posts[p]) for p in ranked[:100]]


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def sent():
    return []


# the votes side

def test_one_announcement_per_flush_with_the_latest_counts(store, sent):
    feed = Coalescer(store.read_counts, store.read_top, sent.append)
    for n in range(1, 6):
        store.posts["a"] = (n, 0)
        feed.changed(["a"])
    store.posts["b"] = (0, 1)
    feed.changed(["b", "a"])

    payload = feed.flush()

    assert sent == [payload]
    assert payload["posts"] == [counts("a", 5), counts("b", 0, 1)]
    assert payload["top"] == [counts("a", 5), counts("b", 0, 1)]
    assert store.reads == [["a", "b"]]  # one read for all of them


def test_nothing_changed_nothing_sent(store, sent):
    feed = Coalescer(store.read_counts, store.read_top, sent.append)
    assert feed.flush() is None
    feed.changed(["a"])
    store.posts["a"] = (1, 0)
    feed.flush()
    assert feed.flush() is None
    assert len(sent) == 1


def test_a_post_without_counts_is_left_out(store, sent):
    feed = Coalescer(store.read_counts, store.read_top, sent.append, clock=lambda: 17.5)
    feed.changed(["gone"])
    assert feed.flush() == {"posts": [], "top": [], "at": 17.5}


def test_at_is_taken_before_the_counts_are_read(store, sent):
    """A gateway's copy trusts counts as of ``at``: never later than the read."""
    ticks = iter(range(100, 200))
    read_at = []

    def read_counts(post_ids):
        read_at.append(next(ticks))
        return store.read_counts(post_ids)
    feed = Coalescer(read_counts, store.read_top, sent.append, clock=lambda: next(ticks))
    store.posts["a"] = (1, 0)
    feed.changed(["a"])
    payload = feed.flush()
    assert (payload["at"], read_at) == (100, [101])


def test_a_failed_publish_is_dropped_and_the_next_flush_goes(store):
    calls = []

    def publish(payload):
        calls.append(payload)
        if len(calls) == 1:
            raise ConnectionError("broker away")

    feed = Coalescer(store.read_counts, store.read_top, publish)
    store.posts["a"] = (1, 0)
    feed.changed(["a"])
    assert feed.flush() is None
    assert (feed.dropped, feed.pending) == (1, set())
    feed.changed(["a"])
    assert feed.flush() == calls[1]
    assert feed.published == 1


def test_a_failed_read_is_dropped(store, sent):
    feed = Coalescer(store.read_counts, store.read_top, sent.append)
    store.fail = OSError("redis away")
    feed.changed(["a"])
    assert feed.flush() is None
    assert sent == [] and feed.dropped == 1


def test_the_top_is_optional(store, sent):
    def no_top():
        raise OSError("redis away")
    feed = Coalescer(store.read_counts, no_top, sent.append, clock=lambda: 3.0)
    store.posts["a"] = (1, 0)
    feed.changed(["a"])
    assert feed.flush() == {"posts": [counts("a", 1)], "at": 3.0}


def test_changed_never_raises_or_blocks(store):
    def stuck(payload):
        eventlet.sleep(10)
    feed = Coalescer(store.read_counts, store.read_top, stuck)
    with eventlet.Timeout(0.1):
        feed.changed(iter(["a", "b"]))
    assert feed.pending == {"a", "b"}


class FakeContainer:
    def __init__(self, config):
        self.config = config
        self.threads = []
        self.dependencies = []

    def spawn_managed_thread(self, run, identifier=None):
        thread = eventlet.spawn(run)
        self.threads.append(thread)
        return thread


def test_the_provider_flushes_every_interval(store, sent):
    provider = CountsFeed(store.read_counts, store.read_top, sent.append)
    provider.container = FakeContainer({"AMQP_URI": "memory://",
                                        "COUNTS_FLUSH_INTERVAL": 0.05})
    provider.setup()
    provider.start()
    changed = provider.get_dependency(None)
    try:
        for n in range(1, 21):  # 20 votes within one interval
            store.posts["a"] = (n, 0)
            changed(["a"])
        eventlet.sleep(0.12)
        assert [p["posts"] for p in sent] == [[counts("a", 20)]]
        store.posts["a"] = (21, 0)
        changed(["a"])
    finally:
        provider.stop()  # what is pending goes out on stop
    assert [p["posts"] for p in sent] == [[counts("a", 20)], [counts("a", 21)]]


# the gateway side

def test_followers_of_a_post_get_its_counts():
    fanout = Fanout()
    mine = fanout.subscribe(["a"], 0)
    other = fanout.subscribe(["b"], 0)

    fanout.announce({"posts": [counts("a", 1), counts("c", 2)]})

    (update,) = mine.get(0)
    assert (update.event, update.data) == (COUNTS, counts("a", 1))
    assert other.get(0) == []


def test_a_slow_subscriber_gets_the_latest_counts_once_per_post():
    fanout = Fanout()
    slow = fanout.subscribe(["a", "b"], 0)
    for n in range(1, 1001):
        fanout.announce({"posts": [counts("a", n)]})
    fanout.announce({"posts": [counts("b", 0, 1)]})

    updates = slow.get(0)

    assert [u.data for u in updates] == [counts("a", 1000), counts("b", 0, 1)]
    assert slow.skipped == 999
    assert updates[0].id < updates[1].id


def test_ids_grow():
    fanout = Fanout()
    sub = fanout.subscribe(["a"], 0)
    ids = []
    for n in range(5):
        fanout.announce({"posts": [counts("a", n)]})
        ids += [u.id for u in sub.get(0)]
    assert ids == sorted(set(ids)) and len(ids) == 5
    assert fanout.next_id() > ids[-1]


def test_top_followers_get_top_on_change_and_counts_of_its_members():
    fanout = Fanout()
    shown = [counts("a", 3), counts("b", 2)]
    sub = fanout.subscribe([], 2, top=shown)

    # the same order: no top, but the counts of a member
    fanout.announce({"posts": [counts("a", 4)],
                     "top": [counts("a", 4), counts("b", 2), counts("c", 1)]})
    assert [(u.event, u.data) for u in sub.get(0)] == [(COUNTS, counts("a", 4))]

    # c passes a: a top update with the new order
    fanout.announce({"posts": [counts("c", 5)],
                     "top": [counts("c", 5), counts("a", 4), counts("b", 2)]})
    updates = sub.get(0)
    assert [u.event for u in updates] == [TOP, COUNTS]
    assert updates[0].data == {"top": [counts("c", 5), counts("a", 4)]}

    # b has left the top 2: its counts no longer come
    fanout.announce({"posts": [counts("b", 3)],
                     "top": [counts("c", 5), counts("a", 4), counts("b", 3)]})
    assert sub.get(0) == []


def test_get_waits_then_wakes_on_an_update():
    fanout = Fanout()
    sub = fanout.subscribe(["a"], 0)
    eventlet.spawn_after(0.05, fanout.announce, {"posts": [counts("a", 1)]})
    with eventlet.Timeout(1):
        assert len(sub.get(5)) == 1
        assert sub.get(0.05) == []


def test_unsubscribe_and_close_end_the_wait():
    fanout = Fanout()
    sub = fanout.subscribe(["a"], 5)
    waiter = eventlet.spawn(sub.get, 10)
    eventlet.sleep(0)
    fanout.close_all()
    with eventlet.Timeout(1), pytest.raises(Closed):
        waiter.wait()
    assert fanout.subscriptions == set() and not fanout._by_post
    fanout.announce({"posts": [counts("a", 1)], "top": [counts("a", 1)]})
    with pytest.raises(Closed):
        sub.get(0)


@pytest.mark.parametrize("post_ids, top_n", [
    (["p{}".format(i) for i in range(101)], 0), ([], 101), ([], -1), ([], "5"),
])
def test_bad_subscriptions(post_ids, top_n):
    with pytest.raises(ValueError):
        Fanout().subscribe(post_ids, top_n)


def test_a_malformed_announcement_is_ignored():
    fanout = Fanout()
    sub = fanout.subscribe(["a"], 3)
    fanout.announce({"posts": [{"nope": 1}, "x"], "top": None})
    fanout.announce({})
    assert sub.get(0) == []
