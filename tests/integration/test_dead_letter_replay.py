"""Dead-letter replay on real RabbitMQ (a vhost per test) and Redis: a
message leaves the dead-letter queue only once its republish is confirmed
and routed, and an event that may have been applied is not replayed."""
import io
import json
import time

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import find_free_port

from services import contracts
from services.votes import schemas
from services.votes.dead_letters import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, replay
from services.votes.exceptions import StoreUnavailable
from services.votes.service import VotesService, event_handler
from services.votes.store import VoteStore
from tests.conftest import make_event, make_vote

EVENTS = Exchange(contracts.EVENTS_EXCHANGE, type="topic", durable=True)
VOTES_QUEUE = Queue(contracts.VOTES_QUEUE,
                    exchange=EVENTS, routing_key=contracts.VOTE_CAST, durable=True)
HANDLER_FAILED = "handler failed 5 times: KeyError: 'x'"
INVALID = "invalid payload: votes: field required"


def declare(amqp_uri, *entities):
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        for entity in entities:
            entity.bind(channel).declare()


def dead_letter(amqp_uri, body, reason, exchange=contracts.EVENTS_EXCHANGE,
                routing_key=contracts.VOTE_CAST, **headers):
    """Put a message in the dead-letter queue as the votes service does."""
    headers.setdefault("x-dead-lettered-at", int(time.time()))
    headers.update({"x-dead-letter-reason": reason,
                    "x-original-exchange": exchange,
                    "x-original-routing-key": routing_key})
    with Connection(amqp_uri) as connection:
        DEAD_LETTER_QUEUE.bind(connection.channel()).declare()
        Producer(connection.channel()).publish(
            json.dumps(body), exchange=DEAD_LETTER_EXCHANGE,
            routing_key=DEAD_LETTER_QUEUE.routing_key, headers=headers,
            content_type="application/json", content_encoding="utf-8",
            delivery_mode=2)


def bodies(amqp_uri, queue):
    """The bodies of every message in ``queue`` (as parsed JSON), left in
    place; the count is exact: nothing is left unacked elsewhere."""
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        _, ready, _ = channel.queue_declare(queue, passive=True)
        taken = []
        while True:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            taken.append(json.loads(message.body))
        channel.close()  # back to the queue
    assert len(taken) == ready
    return taken


def run_replay(amqp_uri, **options):
    out = io.StringIO()
    with Connection(amqp_uri, connect_timeout=5) as connection:
        result = replay(connection, out=out, **options)
    return result, out.getvalue().splitlines()


def test_replay_acks_only_what_the_broker_confirmed_and_routed(rabbit_config):
    amqp_uri = rabbit_config["AMQP_URI"]
    exchange = Exchange("replay.test", type="topic", durable=True)
    target = Queue("replay-target", exchange=exchange, routing_key="ok",
                   durable=True)
    declare(amqp_uri, target)
    # never reached a worker: replayable whatever Redis says
    dead_letter(amqp_uri, {"n": 1}, INVALID, "replay.test", "ok")
    dead_letter(amqp_uri, {"n": 2}, INVALID, "replay.test", "no-queue-bound")
    dead_letter(amqp_uri, {"n": 3}, INVALID, "no-such-exchange", "ok")
    dead_letter(amqp_uri, {"n": 4}, INVALID, "replay.test", "ok")

    (replayed, kept), lines = run_replay(amqp_uri)

    assert (replayed, kept) == (2, 2)
    assert bodies(amqp_uri, "replay-target") == [{"n": 1}, {"n": 4}]
    assert bodies(amqp_uri, DEAD_LETTER_QUEUE.name) == [{"n": 2}, {"n": 3}]
    assert len(lines) == 2
    assert "'no-queue-bound'" in lines[0] and "unroutable" in lines[0]
    assert "'no-such-exchange'" in lines[1] and "refused by the broker" in lines[1]
    assert "NOT_FOUND" in lines[1]


class ApplyThenFail:
    """The votes service's queue, with a handler that applies the event and
    then fails every time: it is dead-lettered although it was applied."""

    name = "votes"
    store = VoteStore()

    @event_handler(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, schema=schemas.parse_event,
                   retry_on=(StoreUnavailable,))
    def handle_vote_cast(self, events):
        for event in events:
            self.store.apply(event.id, event.votes)
        raise KeyError("fails after applying")


def wait_for_depth(amqp_uri, queue, depth, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        with Connection(amqp_uri) as connection:
            try:
                _, ready, _ = connection.channel().queue_declare(
                    queue, passive=True)
            except Exception:
                ready = None
        if ready == depth or time.monotonic() > deadline:
            return ready
        time.sleep(0.1)


def test_applied_event_is_not_replayed_after_its_mark_would_have_expired(
        container_factory, config, redis_client):
    amqp_uri = config["AMQP_URI"]
    # long enough for the 5 tries to find the mark the first one set
    config = dict(config, APPLIED_MARK_TTL=60)
    failing = container_factory(ApplyThenFail, config)
    failing.start()
    event = make_event(make_vote(postId="dl1"))
    event_dispatcher(config)(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, event)
    assert wait_for_depth(amqp_uri, DEAD_LETTER_QUEUE.name, 1) == 1
    failing.stop()
    mark = contracts.applied_key(contracts.bucket_of("dl1"), event["id"])
    # the service found the mark when it dead-lettered the event, and kept it
    assert redis_client.ttl(mark) == -1
    assert redis_client.hgetall(contracts.post_key("dl1")) == {
        "upvote": "1", "downvote": "0", "createdAt": "1700000000"}
    with Connection(amqp_uri) as connection:
        message = connection.channel().basic_get(DEAD_LETTER_QUEUE.name,
                                                 no_ack=True)
    assert message.headers["x-applied-mark"] == "present"
    assert message.headers["x-event-id"] == event["id"]
    assert message.headers["x-dead-letter-reason"].startswith(
        "handler failed 5 times: KeyError")
    # back in the dead-letter queue, as it was
    dead_letter(amqp_uri, event, message.headers["x-dead-letter-reason"],
                **{key: message.headers[key] for key in (
                    "x-applied-mark", "x-event-id", "x-dead-lettered-at")})

    # ten times the mark's TTL later
    (replayed, kept), lines = run_replay(
        amqp_uri, store=redis_client, mark_ttl=60, now=time.time() + 600)

    assert (replayed, kept) == (0, 1)
    assert len(lines) == 1 and "applied: event {}".format(event["id"]) in lines[0]
    assert bodies(amqp_uri, DEAD_LETTER_QUEUE.name) == [event]
    assert bodies(amqp_uri, VOTES_QUEUE.name) == []

    # forced, it is replayed, and the mark kept for good makes it harmless
    votes = container_factory(VotesService, config)
    votes.start()
    with entrypoint_waiter(votes, contracts.VOTE_CAST_HANDLER):
        (replayed, kept), lines = run_replay(
            amqp_uri, store=redis_client, mark_ttl=60, force=True,
            now=time.time() + 600)
    assert (replayed, kept) == (1, 0)
    assert lines[0].startswith("forced message {}".format(event["id"]))
    assert redis_client.hgetall(contracts.post_key("dl1")) == {
        "upvote": "1", "downvote": "0", "createdAt": "1700000000"}
    assert wait_for_depth(amqp_uri, DEAD_LETTER_QUEUE.name, 0) == 0


def test_replay_looks_up_the_mark_of_events_its_handler_failed(
        rabbit_config, redis_client):
    amqp_uri = rabbit_config["AMQP_URI"]
    declare(amqp_uri, VOTES_QUEUE)
    ttl, now = 100, int(time.time())
    applied, old, recent, absent = (make_event(event_id=name) for name in (
        "applied", "old", "recent", "absent"))
    applied_mark = contracts.applied_key(contracts.bucket_of("348"), "applied")
    redis_client.set(applied_mark, "1", ex=ttl)
    # dead-lettered before x-applied-mark was written: looked up in Redis
    dead_letter(amqp_uri, applied, HANDLER_FAILED)
    dead_letter(amqp_uri, old, HANDLER_FAILED, **{
        "x-dead-lettered-at": now - ttl})
    dead_letter(amqp_uri, recent, HANDLER_FAILED, **{
        "x-dead-lettered-at": now - ttl + 10})
    # no mark when dead-lettered, none since: replayable however old
    dead_letter(amqp_uri, absent, HANDLER_FAILED, **{
        "x-dead-lettered-at": now - 10 * ttl, "x-applied-mark": "absent",
        "x-event-id": "absent"})
    # never reached a worker
    dead_letter(amqp_uri, ["not", "an", "event"], INVALID, **{
        "x-dead-lettered-at": now - 10 * ttl})

    (replayed, kept), lines = run_replay(
        amqp_uri, store=redis_client, mark_ttl=ttl, now=now)

    assert (replayed, kept) == (3, 2)
    assert bodies(amqp_uri, VOTES_QUEUE.name) == [
        recent, absent, ["not", "an", "event"]]
    assert bodies(amqp_uri, DEAD_LETTER_QUEUE.name) == [applied, old]
    assert len(lines) == 2
    assert "applied: {} exists".format(applied_mark) in lines[0]
    assert "status unknown: event old was dead-lettered 100 s ago" in lines[1]

    # Redis not answering: nothing of unknown status goes
    unreachable = redis.Redis(port=find_free_port(), socket_connect_timeout=1)
    dead_letter(amqp_uri, absent, HANDLER_FAILED, **{
        "x-applied-mark": "absent", "x-event-id": "absent"})
    (replayed, kept), lines = run_replay(
        amqp_uri, store=unreachable, mark_ttl=ttl, now=now)
    assert (replayed, kept) == (0, 3)
    assert all("status unknown" in line and "Redis did not answer" in line
               for line in lines), lines
    assert len(bodies(amqp_uri, DEAD_LETTER_QUEUE.name)) == 3


@pytest.mark.parametrize("header", [None, "unknown"])
def test_recent_dead_letter_without_a_mark_is_replayed(
        rabbit_config, redis_client, header):
    amqp_uri = rabbit_config["AMQP_URI"]
    declare(amqp_uri, VOTES_QUEUE)
    event = make_event()
    extra = {} if header is None else {"x-applied-mark": header}
    dead_letter(amqp_uri, event, HANDLER_FAILED, **extra)

    (replayed, kept), lines = run_replay(amqp_uri, store=redis_client)

    assert (replayed, kept, lines) == (1, 0, [])
    assert bodies(amqp_uri, VOTES_QUEUE.name) == [event]
    assert bodies(amqp_uri, DEAD_LETTER_QUEUE.name) == []
