"""Group commit, with a fake flush (no broker)."""
import time

import eventlet
import pytest

from services.platform.batching import Expired, GroupCommit


@pytest.fixture
def flushed():
    return []


def make(flushed, max_weight=10, max_wait=5.0, weigh=lambda item: 1, fail=None):
    def flush(items):
        flushed.append(list(items))
        eventlet.sleep(0.01)  # a round trip, while the next group gathers
        if fail:
            raise fail
        return ["done-{}".format(item) for item in items]
    group = GroupCommit(flush, max_weight=max_weight, max_wait=max_wait, weigh=weigh)
    runner = eventlet.spawn(group.run)
    return group, runner


def test_concurrent_callers_share_round_trips(flushed):
    group, runner = make(flushed)
    pool = eventlet.GreenPool()
    results = list(pool.imap(group.submit, range(25)))
    runner.kill()

    assert results == ["done-{}".format(i) for i in range(25)]
    assert sorted(sum(flushed, [])) == list(range(25))
    assert len(flushed) < 25 and max(len(g) for g in flushed) == 10


def test_a_lone_caller_goes_at_once(flushed):
    group, runner = make(flushed)
    with eventlet.Timeout(1):
        assert group.submit("x") == "done-x"
    runner.kill()
    assert flushed == [["x"]]


def test_weight_caps_a_group(flushed):
    group, runner = make(flushed, max_weight=5, weigh=len)
    pool = eventlet.GreenPool()
    list(pool.imap(group.submit, [[1, 2, 3], [4, 5, 6], [7], [8, 9]]))
    runner.kill()
    assert all(sum(len(item) for item in g) <= 5 for g in flushed)
    assert sorted(v for g in flushed for item in g for v in item) == list(range(1, 10))


def outcomes(group, items, error):
    """What each concurrent submit got: its result, or the text of its
    ``error``."""
    def submit(item):
        try:
            return group.submit(item)
        except error as exc:
            return str(exc)
    with eventlet.Timeout(2):
        return list(eventlet.GreenPool().imap(submit, items))


def test_a_failed_flush_fails_its_whole_group(flushed):
    group, runner = make(flushed, fail=ConnectionError("down"))
    assert outcomes(group, range(3), ConnectionError) == ["down"] * 3
    runner.kill()


def test_items_that_waited_too_long_expire_unsent(flushed):
    calls = []

    def slow_flush(items):
        calls.append(list(items))
        eventlet.sleep(0.3)
        return ["sent"] * len(items)

    group = GroupCommit(slow_flush, max_weight=1, max_wait=0.1)
    runner = eventlet.spawn(group.run)
    # an Expired reads "" (it has no message)
    assert outcomes(group, range(3), Expired) == ["sent", "", ""]
    assert calls == [[0]]
    runner.kill()


def test_two_flushers_never_drop_a_carried_item(flushed):
    """a and b do not fit one group: b is carried by the flusher that took
    a; the other flusher, woken by c meanwhile, must not drop it."""
    def flush(items):
        flushed.append(list(items))
        eventlet.sleep(0.05)
        return ["done-{}".format(item) for item in items]

    group = GroupCommit(flush, max_weight=10, max_wait=5.0, weigh=len)
    runners = [eventlet.spawn(group.run) for _ in range(2)]
    eventlet.sleep(0)  # both flushers wait on the queue
    pool = eventlet.GreenPool()
    with eventlet.Timeout(2):
        results = list(pool.imap(group.submit, ["aaaaaa", "bbbbbb", "c"]))
    for runner in runners:
        runner.kill()
    assert results == ["done-aaaaaa", "done-bbbbbb", "done-c"]
    assert sorted(map(tuple, flushed)) == [("aaaaaa",), ("bbbbbb",), ("c",)]


def test_many_flushers_and_carries_answer_every_caller(flushed):
    def flush(items):
        flushed.append(list(items))
        eventlet.sleep(0.001)
        return [len(item) for item in items]

    group = GroupCommit(flush, max_weight=10, max_wait=5.0, weigh=len)
    runners = [eventlet.spawn(group.run) for _ in range(4)]
    items = ["x" * (1 + i % 7) for i in range(400)]
    pool = eventlet.GreenPool(100)
    with eventlet.Timeout(5):
        results = list(pool.imap(group.submit, items))
    for runner in runners:
        runner.kill()
    assert results == [len(item) for item in items]
    assert sorted(sum(flushed, [])) == sorted(items)
    assert all(sum(map(len, g)) <= 10 for g in flushed)


class HangingFlush:
    """A flush that records its items and hangs until released."""

    def __init__(self):
        self.release = eventlet.event.Event()
        self.calls = []

    def __call__(self, items):
        self.calls.append(list(items))
        self.release.wait()
        return ["sent"] * len(items)

    def done(self, runner):
        self.release.send()
        eventlet.sleep(0.05)
        runner.kill()
        return self.calls


def test_deadline_bounds_a_submit_whose_flush_hangs():
    flush = HangingFlush()
    group = GroupCommit(flush, max_weight=1, max_wait=5.0, deadline=0.2)
    runner = eventlet.spawn(group.run)
    # both Expired (""): 0 in flight when the deadline passes, 1 still queued
    assert outcomes(group, range(2), Expired) == ["", ""]
    assert flush.done(runner) == [[0]]  # the abandoned item was never sent


def test_a_callers_own_timeout_bounds_its_submit_too():
    flush = HangingFlush()
    group = GroupCommit(flush, max_weight=1, max_wait=5.0, deadline=5.0)
    runner = eventlet.spawn(group.run)
    started = time.monotonic()
    with pytest.raises(Expired):
        group.submit("a", timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 0.5
    # no time left: refused at once, never queued
    with pytest.raises(Expired):
        group.submit("b", timeout=0)
    assert group.queue.qsize() == 0
    assert flush.done(runner) == [["a"]]


def test_each_flusher_sends_its_groups_and_its_carry_on_its_own_flush():
    """Two loops, each with its own flush (its own connection): an item
    carried by a loop goes out on that loop's flush."""
    sent = {"one": [], "two": []}

    def flush_on(name):
        def flush(items):
            sent[name].append(list(items))
            eventlet.sleep(0.05)
            return [name] * len(items)
        return flush

    group = GroupCommit(None, max_weight=10, max_wait=5.0, weigh=len)
    waiting = [eventlet.spawn(group.submit, item) for item in ("aaaaaa", "bbbbbb")]
    eventlet.sleep(0)  # both queued before a loop looks
    runners = [eventlet.spawn(group.run, flush_on(name)) for name in ("one", "two")]
    with eventlet.Timeout(2):
        results = [caller.wait() for caller in waiting]
    for runner in runners:
        runner.kill()
    # whichever loop took "aaaaaa" carried "bbbbbb" (too heavy to join)
    taker = results[0]
    other = "two" if taker == "one" else "one"
    assert results == [taker, taker]
    assert sent == {taker: [["aaaaaa"], ["bbbbbb"]], other: []}


def test_a_flush_with_the_wrong_number_of_results_fails_its_group(flushed):
    group = GroupCommit(lambda items: [None], max_weight=10, max_wait=5.0)
    runner = eventlet.spawn(group.run)
    assert outcomes(group, range(2), RuntimeError) == ["1 results for 2 items"] * 2
    runner.kill()
