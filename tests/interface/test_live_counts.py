"""The change feed on a real broker and Redis: the votes service announces
counts_changed, coalesced; LiveCounts in every gateway-like container gets
every announcement."""
import time

import eventlet
import pytest
from kombu import Connection, Consumer, Queue

from services import contracts
from services.gateway.live import LiveCounts
from services.votes import feed
from tests.conftest import make_event, make_vote
from tests.interface import test_votes_service

# fixtures: the votes service in a container, and a vote_cast dispatcher
votes = test_votes_service.votes
dispatch = test_votes_service.dispatch

FLUSH_INTERVAL = 1.0  # four times the default: room for a busy machine


@pytest.fixture
def config(config):
    return dict(config, COUNTS_FLUSH_INTERVAL=FLUSH_INTERVAL)


class Announcements:
    """counts_changed events, read off a queue of the test's own."""

    def __init__(self, amqp_uri):
        self.connection = Connection(amqp_uri)
        self.queue = Queue("test-counts-changed", exchange=feed.EXCHANGE,
                           routing_key=contracts.COUNTS_CHANGED,
                           exclusive=True, auto_delete=True, durable=False)
        self.received = []
        self.consumer = Consumer(self.connection, queues=[self.queue],
                                 callbacks=[self._on_message], no_ack=True,
                                 accept=["json"])
        self.consumer.consume()

    def _on_message(self, body, message):
        self.received.append((time.monotonic(), body, message))

    def drain(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.connection.drain_events(timeout=0.05)
            except TimeoutError:
                pass

    def wait_for(self, predicate, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [body for _, body, _ in self.received if predicate(body)]
            if found:
                return found
            self.drain(0.05)
        raise AssertionError("no such announcement within {}s: {}".format(
            timeout, [body for _, body, _ in self.received]))

    def close(self):
        self.connection.release()


@pytest.fixture
def announcements(config):
    received = Announcements(config["AMQP_URI"])
    yield received
    received.close()


def posts_in(body):
    return {counts["postId"] for counts in body["posts"]}


def test_many_votes_to_one_post_make_one_announcement(
        votes, dispatch, announcements, redis_client):
    # line up with the flusher: votes sent and applied within half an
    # interval of a flush all fall in the next window
    dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST,
             make_event(make_vote(postId="warm-up")))
    announcements.wait_for(lambda body: "warm-up" in posts_in(body))
    announcements.received.clear()

    sent_at = time.monotonic()
    for _ in range(20):
        dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST,
                 make_event(make_vote(postId="hot", score=1)))
    dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST,
             make_event(make_vote(postId="hot", score=-1)))
    took = time.monotonic() - sent_at
    assert took < FLUSH_INTERVAL / 2, "sending took {:.2f}s, the test needs it under {}s".format(
        took, FLUSH_INTERVAL / 2)

    announcements.drain(2 * FLUSH_INTERVAL)

    hot = [(at, body, message) for at, body, message in announcements.received
           if "hot" in posts_in(body)]
    assert len(hot) == 1, [body for _, body, _ in hot]
    _, body, message = hot[0]
    final = {"postId": "hot", "upvote": 20, "downvote": 1, "score": 19}
    assert body["posts"] == [final]
    assert redis_client.hgetall(contracts.post_key("hot")) == {
        "upvote": "20", "downvote": "1", "createdAt": "1700000000"}
    assert final in body["top"] and body["top"][0] == final
    assert message.properties.get("delivery_mode") == 1  # not persistent


def test_a_quiet_service_announces_nothing(votes, announcements):
    announcements.drain(2 * FLUSH_INTERVAL)
    assert announcements.received == []


class LiveGateway:
    name = "live_gateway"
    live = LiveCounts()


def test_every_gateway_process_gets_every_announcement(
        votes, dispatch, container_factory, config):
    gateways = [container_factory(LiveGateway, config) for _ in range(2)]
    for container in gateways:
        container.start()
    providers = [next(iter(c.dependencies)) for c in gateways]

    def all_consuming():
        return all(provider.connected for provider in providers)
    deadline = time.monotonic() + 5
    while not all_consuming() and time.monotonic() < deadline:
        eventlet.sleep(0.05)
    assert all_consuming()
    eventlet.sleep(0.2)  # the queues bound

    subscriptions = [p.subscribe(["348"], 5) for p in providers]
    dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST,
             make_event(make_vote(postId="348", score=1)))

    final = {"postId": "348", "upvote": 1, "downvote": 0, "score": 1}
    for subscription in subscriptions:
        updates = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                u.event == "counts" for u in updates):
            updates += subscription.get(0.2)
        assert [u.data for u in updates if u.event == "counts"] == [final]
        assert [u.data for u in updates if u.event == "top"] == [{"top": [final]}]

    # the gateway stops: its streams end
    gateways[0].stop()
    with pytest.raises(Exception) as closed:
        subscriptions[0].get(1)
    assert type(closed.value).__name__ == "Closed"
