"""ConfirmedPublisher with a fake connection (no broker): retry once on a
connection that died idle, the deadline split, confirms and refusals."""
import time

import amqp
import eventlet
import pytest
from eventlet.semaphore import Semaphore
from kombu.exceptions import ChannelError

from services.platform.publisher import ConfirmedPublisher


class Unavailable(Exception):
    pass


class Publisher(ConfirmedPublisher):
    source_service = "src"
    routing_key = "thing_done"
    queue = "evt-src-thing_done--dst.handle"
    timeout_setting = "publish_timeout"
    max_group_weight = 10
    unavailable = Unavailable
    what = "the thing"
    failures = 0

    def message(self, groups):
        return {"items": [item for group in groups for item in group]}

    def on_failure(self):
        self.failures += 1


class FakeProducer:
    def __init__(self, link):
        self.link = link

    def publish(self, body, **kwargs):
        self.link.calls.append((body, kwargs))
        outcome = self.link.outcomes.pop(0) if self.link.outcomes else None
        if isinstance(outcome, (int, float)):
            eventlet.sleep(outcome)  # a confirm that takes this long
        elif outcome is not None:
            raise outcome


class FakeLink:
    """services.platform.amqp_layer.Link without a socket: ``outcomes`` is
    what each publish does in turn (None: confirmed; a number: seconds it
    hangs; an exception: raised)."""

    def __init__(self, open_=True, outcomes=()):
        self.lock = Semaphore()
        self.outcomes = list(outcomes)
        self.calls = []
        self.resets = 0
        self.producer = FakeProducer(self) if open_ else None

    def get_producer(self):
        if self.producer is None:
            self.producer = FakeProducer(self)
        return self.producer

    def publish(self, body, *, exchange, routing_key, timeout, **options):
        # as amqp_layer.Link.publish: bounded, confirmed, reset on failure
        try:
            with eventlet.Timeout(timeout):
                self.get_producer().publish(
                    body, exchange=exchange, routing_key=routing_key,
                    retry=False, confirm_timeout=timeout, **options)
        except BaseException:
            self.reset()
            raise

    def reset(self, failed=False):
        self.resets += 1
        self.producer = None


@pytest.fixture
def publisher(mock_container):
    mock_container.config.update({"AMQP_URI": "memory://", "PUBLISH_TIMEOUT": 0.5})
    mock_container.service_name = "src"
    provider = Publisher().bind(mock_container, "publish")
    provider.setup()
    return provider


def test_the_deadline_is_split_queued_then_published(publisher):
    assert publisher.timeout == 0.5
    # 5% of it is kept for the answer's way out: 0.475 s for the rest
    assert publisher.answer_within == pytest.approx(0.475)
    assert publisher.group.max_wait == pytest.approx(0.19)   # 40% queued
    assert publisher.publish_time == pytest.approx(0.285)    # 60% publishing
    assert publisher.group.deadline == pytest.approx(0.475)  # the whole bound


def test_the_reserve_for_the_answer_is_at_most_a_quarter_second(mock_container):
    mock_container.config.update({"AMQP_URI": "memory://", "PUBLISH_TIMEOUT": 30})
    provider = Publisher().bind(mock_container, "publish")
    provider.setup()
    assert provider.answer_within == pytest.approx(29.75)


def test_the_deadline_runs_from_the_workers_start(publisher):
    """A worker that spent time before it publishes (a rate limit, say)
    has only the rest: the refusal comes within PUBLISH_TIMEOUT of the
    worker's start, less the reserve, however late the publish began."""
    link = FakeLink(outcomes=[10])  # a broker that never confirms
    runner = eventlet.spawn(publisher.group.run,
                            lambda groups: publisher._publish(link, groups))
    started = time.monotonic()
    publish = publisher.get_dependency(worker_ctx=None)
    eventlet.sleep(0.3)
    with pytest.raises(Unavailable, match="^RabbitMQ did not take the thing in time$"):
        publish(["a"])
    assert 0.47 <= time.monotonic() - started < 0.5
    # a worker whose time is already up publishes nothing
    late = publisher.get_dependency(worker_ctx=None)
    eventlet.sleep(0.5)
    calls = len(link.calls)
    with pytest.raises(Unavailable):
        late(["b"])
    eventlet.sleep(0.01)
    runner.kill()
    assert len(link.calls) == calls


def test_a_publish_is_persistent_mandatory_and_confirmed(publisher):
    link = FakeLink()
    assert publisher._publish(link, [["a"], ["b", "c"]]) == [None, None]
    ((body, kwargs),) = link.calls
    assert body == {"items": ["a", "b", "c"]}
    assert kwargs["exchange"].name == "src.events"
    assert (kwargs["routing_key"], kwargs["delivery_mode"], kwargs["mandatory"],
            kwargs["retry"]) == ("thing_done", 2, True, False)
    assert 0 < kwargs["confirm_timeout"] <= 0.285


def test_the_queue_is_declared_with_the_exchange(publisher):
    exchange, queue = publisher.connections[0].declare
    assert exchange.name == "src.events"
    assert (queue.name, queue.routing_key, queue.durable, queue.auto_delete) == (
        "evt-src-thing_done--dst.handle", "thing_done", True, False)
    assert all(link.confirms for link in publisher.connections)


def test_a_connection_dead_while_idle_is_retried_once(publisher):
    link = FakeLink(open_=True, outcomes=[ConnectionResetError("gone"), None])
    assert publisher._publish(link, [["a"]]) == [None]
    assert len(link.calls) == 2 and link.resets == 1
    assert publisher.failures == 0


def test_a_new_connection_that_fails_is_not_retried(publisher):
    link = FakeLink(open_=False, outcomes=[ConnectionResetError("gone"), None])
    with pytest.raises(Unavailable, match="^RabbitMQ is unavailable$"):
        publisher._publish(link, [["a"]])
    assert len(link.calls) == 1 and link.resets == 1
    assert publisher.failures == 1


def test_the_retry_fails_too(publisher):
    link = FakeLink(outcomes=[ConnectionResetError("gone"), OSError("still gone")])
    with pytest.raises(Unavailable, match="^RabbitMQ is unavailable$"):
        publisher._publish(link, [["a"]])
    assert len(link.calls) == 2 and link.resets == 2


def test_a_channel_error_is_a_refusal_not_retried(publisher):
    link = FakeLink(outcomes=[ChannelError("NOT_FOUND - no exchange")])
    with pytest.raises(Unavailable, match="^RabbitMQ refused the thing$"):
        publisher._publish(link, [["a"]])
    assert len(link.calls) == 1 and link.resets == 1
    assert publisher.failures == 1


def test_a_nack_fails_the_group(publisher):
    # py-amqp raises MessageNacked; on an open link it is published once more
    link = FakeLink(outcomes=[amqp.exceptions.MessageNacked()] * 2)
    with pytest.raises(Unavailable, match="^RabbitMQ is unavailable$"):
        publisher._publish(link, [["a"]])
    assert len(link.calls) == 2


def test_a_confirm_that_never_comes_fails_within_the_publish_share(publisher):
    link = FakeLink(outcomes=[10])
    started = time.monotonic()
    with pytest.raises(Unavailable):
        publisher._publish(link, [["a"]])
    assert 0.25 <= time.monotonic() - started < 0.45  # 60% of 0.475 s, not all of it
    assert link.resets == 1


def test_a_slow_confirm_leaves_no_time_for_a_retry(publisher):
    # the first try used the whole share: the retry gets what is left, none
    link = FakeLink(outcomes=[10, None])
    with pytest.raises(Unavailable):
        publisher._publish(link, [["a"]])
    assert len(link.calls) == 1


def test_callers_are_grouped_and_answered_after_the_confirm(publisher):
    link = FakeLink(outcomes=[0.05, None])
    runner = eventlet.spawn(publisher.group.run,
                            lambda groups: publisher._publish(link, groups))
    first = eventlet.spawn(publisher.publish, ["a"])
    eventlet.sleep(0.01)  # "a" is in flight: "b" and "c" gather meanwhile
    pool = eventlet.GreenPool()
    with eventlet.Timeout(2):
        list(pool.imap(publisher.publish, [["b"], ["c"]]))
        first.wait()
    runner.kill()
    assert [body["items"] for body, _ in link.calls] == [["a"], ["b", "c"]]


def test_a_caller_that_waited_past_its_share_is_refused_unsent(publisher):
    link = FakeLink(outcomes=[0.28, None])  # a publish near the whole share
    runner = eventlet.spawn(publisher.group.run,
                            lambda groups: publisher._publish(link, groups))
    first = eventlet.spawn(publisher.publish, ["a"])
    eventlet.sleep(0.01)
    with pytest.raises(Unavailable, match="^RabbitMQ did not take the thing in time$"):
        with eventlet.Timeout(2):
            publisher.publish(["b"])  # waits 0.27 s in the queue, over 0.19 s
    first.wait()
    runner.kill()
    assert [body["items"] for body, _ in link.calls] == [["a"]]
