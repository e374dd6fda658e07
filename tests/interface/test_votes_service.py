"""The votes service alone in a container, on real RabbitMQ and Redis."""
import json
import time

import pytest
import redis
import yaml
from amqp.exceptions import ChannelError
from kombu import Connection, Exchange, Producer, Queue
from nameko.exceptions import ConfigurationError, RemoteError
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter

from services import contracts, rules
from services.votes import dead_letters as dead_letter_tool
from services.votes import schemas
from services.votes.dead_letters import DEAD_LETTER_EXCHANGE
from services.votes.dead_letters import DEAD_LETTER_QUEUE as DEAD_LETTERS
from services.votes.service import VotesService
from services.votes.store import Limits, VoteStorage
from tests.conftest import make_event, make_vote

DEAD_LETTER_QUEUE = contracts.DEAD_LETTER_QUEUE
TOP_348 = contracts.top_key(contracts.bucket_of("348"))
VOTES_QUEUE = contracts.VOTES_QUEUE


@pytest.fixture
def votes(container_factory, config):
    container = container_factory(VotesService, config)
    container.start()
    return container


@pytest.fixture
def dispatch(config):
    return event_dispatcher(config)


@pytest.fixture
def rpc(config):
    with ServiceRpcProxy("votes", config, timeout=10) as proxy:
        yield proxy


def cast(container, dispatch, event):
    with entrypoint_waiter(container, contracts.VOTE_CAST_HANDLER) as result:
        dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, event)
    result.get()


def dead_letters(amqp_uri, expected, timeout=10):
    """Take `expected` raw messages off the dead-letter queue."""
    taken = []
    deadline = time.monotonic() + timeout
    with Connection(amqp_uri) as connection:
        channel = connection.default_channel
        while len(taken) < expected and time.monotonic() < deadline:
            try:
                message = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=True)
            except ChannelError:  # not declared yet
                message = None
                channel = connection.channel()
            if message is None:
                time.sleep(0.05)
            else:
                taken.append(message)
    assert len(taken) == expected
    return taken


def queue_depth(amqp_uri, name):
    with Connection(amqp_uri) as connection:
        _, count, _ = connection.default_channel.queue_declare(name, passive=True)
    return count


def test_event_creates_and_updates_a_post(votes, dispatch, rpc, redis_client):
    cast(votes, dispatch, make_event(make_vote(score=1), make_vote(score=1)))
    cast(votes, dispatch, make_event(make_vote(score=-1)))

    assert rpc.get_counts("348") == {
        "postId": "348", "upvote": 2, "downvote": 1, "score": 1}
    # created by its first vote, with that vote's createdAt
    assert redis_client.hgetall("votes:{b2}:post:348") == {
        "upvote": "2", "downvote": "1", "createdAt": "1700000000"}
    assert redis_client.zscore(TOP_348, "348") == -1


def test_redelivered_event_counts_once(votes, dispatch, rpc, redis_client):
    event = make_event(make_vote(score=1), make_vote(score=-1, postId="9"))
    cast(votes, dispatch, event)
    cast(votes, dispatch, event)

    assert rpc.get_counts("348")["upvote"] == 1
    assert rpc.get_counts("9")["downvote"] == 1
    # one mark for the event, in the lowest bucket of its posts (348: b2,
    # 9: b5), none in the other
    assert 86390 < redis_client.ttl("votes:{b2}:applied:" + event["id"]) <= 86400
    assert redis_client.exists("votes:{b5}:applied:" + event["id"]) == 0


@pytest.mark.parametrize("payload, reason", [
    ({"votes": [make_vote()]}, "invalid payload: id: Field required"),
    (make_event(make_vote(score=2)),
     "invalid payload: votes.0.score: Input should be 1, -1 or 0"),
    (make_event(make_vote(postId="3 48")),
     "invalid payload: votes.0.postId: String should match pattern "
     "'^[A-Za-z0-9_-]{1,64}$'"),
    (make_event(make_vote(score=0)),
     "invalid payload: votes.0: Value error, score 0 (retraction) needs a voterId"),
    ({"id": "x", "votes": []},
     "invalid payload: votes: List should have at least 1 item after validation, not 0"),
    ("just a string",
     "invalid payload: payload: Input should be a valid dictionary or instance of VoteCast"),
    # Python's re, which the raw reading uses, would match this one
    (make_event(make_vote(postId="348\n")),
     "invalid payload: votes.0.postId: String should match pattern "
     "'^[A-Za-z0-9_-]{1,64}$'"),
])
def test_invalid_event_is_dead_lettered(votes, dispatch, rpc, config, payload,
                                        reason, redis_client):
    dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, payload)
    (message,) = dead_letters(config["AMQP_URI"], 1)

    assert message.headers["x-dead-letter-reason"] == reason
    assert message.headers["x-original-routing-key"] == contracts.VOTE_CAST
    assert message.headers["x-original-exchange"] == contracts.EVENTS_EXCHANGE
    assert json.loads(message.body) == payload
    # nothing changed, and the service goes on
    assert redis_client.keys(contracts.POST_KEY_PATTERN) == []
    cast(votes, dispatch, make_event(make_vote()))
    assert rpc.get_counts("348")["upvote"] == 1
    assert queue_depth(config["AMQP_URI"], VOTES_QUEUE) == 0


@pytest.mark.parametrize("body, content_type, reason", [
    (b"{not json", "application/json",
     "undecodable body: DecodeError: Expecting property name enclosed in "
     "double quotes: line 1 column 2 (char 1)"),
    (b"\x80\x81", "application/octet-stream",
     "undecodable body: ContentDisallowed: Refusing to deserialize untrusted "
     "content of type application/octet-stream (application/octet-stream)"),
    # refused by the raw reading at once, then too deep for json.loads
    (b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json",
     "undecodable body: DecodeError: maximum recursion depth exceeded while "
     "decoding a JSON array from a unicode string"),
])
def test_undecodable_message_is_dead_lettered(votes, dispatch, rpc, config, body,
                                              content_type, reason):
    with Connection(config["AMQP_URI"]) as connection:
        Producer(connection.channel()).publish(
            body, exchange=Exchange(contracts.EVENTS_EXCHANGE, type="topic", durable=True),
            routing_key=contracts.VOTE_CAST, content_type=content_type,
            # utf-8 JSON goes by the raw reading first
            content_encoding="utf-8" if content_type == "application/json" else "binary")
    (message,) = dead_letters(config["AMQP_URI"], 1)

    assert message.headers["x-dead-letter-reason"] == reason
    # (py-amqp hands a utf-8 body over as text)
    copied = message.body.encode() if isinstance(message.body, str) else message.body
    assert copied == body
    cast(votes, dispatch, make_event(make_vote()))
    assert rpc.get_counts("348")["upvote"] == 1


def test_rpc_vote_and_reads(votes, rpc):
    assert rpc.vote("348", 1) == {
        "postId": "348", "upvote": 1, "downvote": 0, "score": 1}
    assert rpc.vote("348", -1) == {
        "postId": "348", "upvote": 1, "downvote": 1, "score": 0}
    assert rpc.vote("0348", -1) == {
        "postId": "0348", "upvote": 0, "downvote": 1, "score": -1}
    assert rpc.get_counts_many([["348", None], ["nope", None], ["0348", "v"]]) == [
        {"postId": "348", "upvote": 1, "downvote": 1, "score": 0},
        None,
        {"postId": "0348", "upvote": 0, "downvote": 1, "score": -1, "myVote": 0},
    ]
    assert rpc.top(2) == [
        {"postId": "348", "upvote": 1, "downvote": 1, "score": 0},
        {"postId": "0348", "upvote": 0, "downvote": 1, "score": -1},
    ]


@pytest.mark.parametrize("call, error", [
    (lambda rpc: rpc.get_counts("nope"), "NotFound post nope has no votes"),
    (lambda rpc: rpc.vote("348", 2),
     "InvalidVote score: Input should be 1, -1 or 0"),
    (lambda rpc: rpc.vote("348", True),
     "InvalidVote score: Input should be 1, -1 or 0"),
    (lambda rpc: rpc.vote("", 1),
     "InvalidVote postId: String should match pattern '^[A-Za-z0-9_-]{1,64}$'"),
    (lambda rpc: rpc.get_counts("a b"),
     "InvalidVote post_id: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    (lambda rpc: rpc.top(0), "InvalidVote limit: must be an integer from 1 to 100"),
    (lambda rpc: rpc.top(101), "InvalidVote limit: must be an integer from 1 to 100"),
])
def test_rpc_errors(votes, rpc, call, error, redis_client):
    with pytest.raises(Exception) as raised:
        call(rpc)
    assert "{} {}".format(raised.value.exc_type, raised.value.value) == error
    assert redis_client.keys(contracts.KEY_PREFIX + "*") == []


def test_latest_vote_wins_out_of_order_and_redelivered(votes, dispatch, rpc):
    """ann's votes, accepted at ts 10..13, arrive shuffled and twice."""
    accepted = [make_vote(voterId="ann", score=s, ts=t)
                for s, t in ((1, 10), (-1, 11), (0, 12), (-1, 13))]
    events = [make_event(vote) for vote in accepted]
    for index in (3, 0, 2, 3, 1, 0, 2):
        cast(votes, dispatch, events[index])

    assert rpc.get_counts("348", "ann") == {
        "postId": "348", "upvote": 0, "downvote": 1, "score": -1, "myVote": -1}
    assert rpc.get_counts("348", "bob")["myVote"] == 0


def test_retraction_that_arrives_first_still_wins(votes, dispatch, rpc):
    cast(votes, dispatch, make_event(make_vote(voterId="bob", score=1, ts=5)))
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=0, ts=20)))
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=1, ts=19)))
    assert rpc.get_counts("348", "ann") == {
        "postId": "348", "upvote": 1, "downvote": 0, "score": 1, "myVote": 0}


def test_retracting_nothing_creates_nothing(votes, dispatch, rpc, redis_client):
    cast(votes, dispatch, make_event(make_vote(postId="empty", voterId="ann", score=0)))
    with pytest.raises(RemoteError) as raised:
        rpc.get_counts("empty")
    assert raised.value.exc_type == "NotFound"
    assert redis_client.keys(contracts.POST_KEY_PATTERN) == []
    assert redis_client.zrange(contracts.top_key(contracts.bucket_of("empty")),
                               0, -1) == []
    with pytest.raises(RemoteError) as raised:
        rpc.vote("empty", 0, voter_id="bob")
    assert raised.value.exc_type == "NotFound"


def test_retraction_removes_the_voter_entry(votes, dispatch, rpc, redis_client):
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=1, ts=10)))
    cast(votes, dispatch, make_event(make_vote(voterId="bob", score=-1, ts=11)))
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=0, ts=12)))
    assert redis_client.hkeys(contracts.voters_key("348")) == ["bob"]
    cast(votes, dispatch, make_event(make_vote(voterId="bob", score=0, ts=13)))
    assert redis_client.exists(contracts.voters_key("348")) == 0
    # what remembers the retractions expires on its own
    assert 0 < redis_client.ttl(contracts.retracted_key("348")) <= 3600
    assert rpc.get_counts("348", "ann") == {
        "postId": "348", "upvote": 0, "downvote": 0, "score": 0, "myVote": 0}
    # a later vote of ann's counts again
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=-1, ts=14)))
    assert rpc.get_counts("348", "ann")["downvote"] == 1
    assert redis_client.hkeys(contracts.retracted_key("348")) == ["bob"]


def now_us():
    return time.time_ns() // 1000


@pytest.mark.parametrize("ahead_us", [10_000_000, 2 ** 53 - 1])
def test_votes_from_the_future_do_not_lock_a_voter(votes, dispatch, rpc, redis_client,
                                                   ahead_us):
    """A gateway 10 s fast, or an event with ts 2**53-1: the store takes
    its own time for such a vote, so the voter's next vote wins."""
    future = min(now_us() + ahead_us, 2 ** 53 - 1)
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=1, ts=future)))
    entry_ts = int(redis_client.hget(contracts.voters_key("348"), "ann").split(":")[0])
    assert entry_ts <= now_us()
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=-1, ts=now_us())))
    assert rpc.get_counts("348", "ann") == {
        "postId": "348", "upvote": 0, "downvote": 1, "score": -1, "myVote": -1}


def test_a_time_within_the_allowed_skew_is_kept(votes, dispatch, redis_client):
    ts = now_us() + 1_000_000  # 1 s ahead; MAX_CLOCK_SKEW is 2 s
    cast(votes, dispatch, make_event(make_vote(voterId="ann", score=1, ts=ts)))
    assert redis_client.hget(contracts.voters_key("348"), "ann").startswith(str(ts) + ":")


def test_keyed_votes_count_once_per_key(votes, dispatch, rpc, redis_client):
    key, other = rules.key_id("k-1"), rules.key_id("k-2")
    fp = rules.fingerprint([("348", 1, None)])
    keyed = make_vote(voteId=key, key=key, fp=fp)
    # the first try, a retry in another event, and two copies in one event
    cast(votes, dispatch, make_event(keyed))
    cast(votes, dispatch, make_event(dict(keyed, ts=keyed["ts"] + 1)))
    cast(votes, dispatch, make_event(keyed, keyed))
    # the same key with another vote: not counted
    cast(votes, dispatch, make_event(make_vote(voteId=key, key=key, score=-1,
                                               fp=rules.fingerprint([("348", -1, None)]))))
    # a batch under one key: every vote counts, once
    batch_fp = rules.fingerprint([("348", 1, None), ("348", -1, None)])
    batch = [make_vote(voteId=other + "-0", key=other, fp=batch_fp),
             make_vote(voteId=other + "-1", key=other, fp=batch_fp, score=-1)]
    cast(votes, dispatch, make_event(*batch))
    cast(votes, dispatch, make_event(*batch))
    assert rpc.get_counts("348") == {
        "postId": "348", "upvote": 2, "downvote": 1, "score": 1}
    once = contracts.once_key(contracts.bucket_of("348"), key)
    for mark in (contracts.claim_key(key), once):
        assert redis_client.get(mark) == fp
        assert 86000 < redis_client.ttl(mark) <= 86400


def test_rpc_vote_with_an_idempotency_key(votes, rpc):
    for _ in range(3):
        assert rpc.vote("348", 1, idempotency_key="op-1") == {
            "postId": "348", "upvote": 1, "downvote": 0, "score": 1}
    # reused for another vote: nothing more is counted
    assert rpc.vote("348", -1, idempotency_key="op-1") == {
        "postId": "348", "upvote": 1, "downvote": 0, "score": 1}


def test_events_that_wait_are_applied_in_batches_each_once(container_factory, config,
                                                           redis_client):
    """Events queued while the service was away: one worker takes many of
    them, never more than one apply call's votes, and each counts once."""
    container = container_factory(VotesService, config)
    container.start()  # declares the queue
    container.stop()
    dispatch = event_dispatcher(config)
    events = [make_event(*[make_vote(postId="b{}".format(k % 7), score=1 - 2 * (k % 3 == 0))
                           for k in range(n, n + 10)]) for n in range(0, 3000, 10)]
    events.append(events[5])  # a redelivery, in a batch of its own or not
    for event in events:
        dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, event)

    container = container_factory(VotesService, config)
    batches = []
    spawn_worker = container.spawn_worker

    def spy(entrypoint, args, kwargs, **options):
        if entrypoint.method_name == contracts.VOTE_CAST_HANDLER:
            batches.append(len(args[0]))
        return spawn_worker(entrypoint, args, kwargs, **options)
    container.spawn_worker = spy
    container.start()
    deadline = time.monotonic() + 30
    while queue_depth(config["AMQP_URI"], VOTES_QUEUE) or sum(batches) < len(events):
        assert time.monotonic() < deadline, "not drained"
        time.sleep(0.05)
    container.stop()

    assert sum(batches) == len(events) == 301
    assert len(batches) < len(events) / 5 and max(batches) <= 200  # 2,000 votes
    up = {post: sum(1 for k in range(3000) if k % 7 == post and k % 3) for post in range(7)}
    for post in range(7):
        assert redis_client.hgetall(contracts.post_key("b{}".format(post))) == {
            "upvote": str(up[post]),
            "downvote": str(sum(1 for k in range(3000) if k % 7 == post) - up[post]),
            "createdAt": "1700000000"}


def test_redelivered_rpc_vote_counts_once(votes, rpc, config):
    """The same request (one correlation id) delivered twice, as after a
    votes process dies before it acks: one vote."""
    rpc_exchange = Exchange(contracts.RPC_EXCHANGE, type="topic", durable=True)
    with Connection(config["AMQP_URI"]) as connection:
        channel = connection.channel()
        reply_queue = Queue("test-replies", exchange=rpc_exchange,
                            routing_key="test-replies", exclusive=True,
                            channel=channel)
        reply_queue.declare()
        producer = Producer(channel)
        for _ in range(2):
            producer.publish(
                {"args": ["348", -1], "kwargs": {}},
                exchange=rpc_exchange,
                routing_key=contracts.rpc_routing_key(contracts.RPC_VOTE), reply_to="test-replies",
                correlation_id="request-1", serializer="json")
        replies = []
        deadline = time.monotonic() + 10
        while len(replies) < 2 and time.monotonic() < deadline:
            message = reply_queue.get(no_ack=True)
            if message is None:
                time.sleep(0.05)
            else:
                replies.append(json.loads(message.body)["result"])
    assert replies == [{"postId": "348", "upvote": 0, "downvote": 1, "score": -1}] * 2


@pytest.mark.parametrize("key, value", [
    ("APPLIED_MARK_TTL", 0), ("APPLIED_MARK_TTL", -5), ("APPLIED_MARK_TTL", "1d"),
    ("APPLIED_MARK_TTL", 1.5), ("IDEMPOTENCY_TTL", 0), ("MAX_CLOCK_SKEW", -1),
    ("RETRACTION_TTL", "never"),
])
def test_bad_numeric_settings_refuse_to_start(container_factory, config, key, value):
    container = container_factory(VotesService, dict(config, **{key: value}))
    with pytest.raises(ConfigurationError) as raised:
        container.start()
    assert str(raised.value).startswith("{} must be".format(key))
    assert "(got {!r})".format(value) in str(raised.value)


def test_the_apply_script_writes_nothing_on_bad_arguments(redis_uri, redis_client):
    """A mark TTL Redis refuses is checked before the first write, so a
    retry can never add the votes again."""
    client = redis.Redis.from_url(redis_uri, decode_responses=True)
    storage = VoteStorage(client, Limits(mark_ttl=0, idempotency_ttl=60,
                                         clock_skew=2.0, retraction_ttl=60))
    vote = schemas.parse_vote(make_vote(voterId="ann"))
    for _ in range(3):
        with pytest.raises(redis.ResponseError):
            storage.apply("e1", [vote])
    assert redis_client.keys("*") == []
    client.close()


def test_voter_storage_layout(votes, dispatch, redis_client):
    vote = make_vote(voterId="ann", score=-1, ts=42)
    cast(votes, dispatch, make_event(vote))
    assert redis_client.hgetall(contracts.voters_key("348")) == {
        "ann": "42:{}:-1".format(vote["voteId"])}


def test_dead_letters_shown_then_replayed(votes, dispatch, rpc, config, tmp_path):
    """An event dead-lettered after a handler bug, replayed once fixed."""
    good = make_event(make_vote(postId="dl", score=-1))
    with Connection(config["AMQP_URI"]) as connection:
        DEAD_LETTERS.bind(connection.channel()).declare()
        Producer(connection.channel()).publish(
            good, exchange=DEAD_LETTER_EXCHANGE, routing_key=DEAD_LETTERS.routing_key,
            headers={"x-dead-letter-reason": "handler failed 5 times: KeyError: 'x'",
                     "x-original-exchange": contracts.EVENTS_EXCHANGE,
                     "x-original-routing-key": contracts.VOTE_CAST,
                     # within the mark TTL: replayed, since no mark exists
                     "x-dead-lettered-at": int(time.time())},
            serializer="json")
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))

    shown = tmp_path / "shown"
    with Connection(config["AMQP_URI"]) as connection, open(shown, "w") as out:
        assert dead_letter_tool.show(connection, out) == 1
    assert [json.loads(line) for line in shown.read_text().splitlines()] == [{
        "reason": "handler failed 5 times: KeyError: 'x'",
        "routingKey": contracts.VOTE_CAST,
        "requestIds": [],
        "body": json.dumps(good)}]

    with entrypoint_waiter(votes, contracts.VOTE_CAST_HANDLER):
        assert dead_letter_tool.main(["replay", "--config", str(config_file)]) == 0
    assert rpc.get_counts("dl") == {"postId": "dl", "upvote": 0, "downvote": 1, "score": -1}
    assert queue_depth(config["AMQP_URI"], DEAD_LETTER_QUEUE) == 0


def two_buckets():
    """Two post ids in different buckets."""
    first = "348"
    other = next(post for post in ("p{}".format(i) for i in range(100))
                 if contracts.bucket_of(post) != contracts.bucket_of(first))
    return first, other


def test_a_claimed_key_whose_parts_were_not_applied_is_applied_on_retry(
        redis_uri, redis_client):
    """The key was claimed, then the worker died before any part: the
    redelivered event must apply its votes (once), and another request
    under the key stays a conflict in every bucket."""
    first, other = two_buckets()
    key = rules.key_id("k-9")
    fp = rules.fingerprint([(first, 1, None)])
    redis_client.set(contracts.claim_key(key), fp, ex=60)
    storage = VoteStorage(redis.Redis.from_url(redis_uri, decode_responses=True),
                          Limits(60, 60, 2.0, 60))
    keyed = [schemas.parse_vote(make_vote(postId=first, voteId=key, key=key, fp=fp))]
    assert tuple(storage.apply("e1", keyed)) == (1, 0, 0)
    assert tuple(storage.apply("e2", keyed)) == (0, 1, 0)
    conflicting = [schemas.parse_vote(make_vote(postId=other, voteId=key, key=key,
                                                fp=rules.fingerprint([(other, 1, None)])))]
    assert tuple(storage.apply("e3", conflicting)) == (0, 0, 1)
    assert storage.counts_many([(first, None), (other, None)]) == [
        {"postId": first, "upvote": 1, "downvote": 0, "score": 1}, None]


@pytest.mark.parametrize("corrupt", ["a string", "a count that is no integer"])
def test_a_post_key_written_by_something_else_fails_the_call_before_any_write(
        redis_uri, redis_client, corrupt):
    """A post's key holding what the votes service never writes: the apply
    call fails before its first write (no mark, no count of the event's
    other post), so once the key is put right the retry counts each vote
    once."""
    first, other = two_buckets()
    storage = VoteStorage(redis.Redis.from_url(redis_uri, decode_responses=True),
                          Limits(60, 60, 2.0, 60))
    votes = [schemas.parse_vote(make_vote(postId=post)) for post in (first, other)]
    bad = contracts.post_key(other)
    if corrupt == "a string":
        redis_client.set(bad, "x")
    else:
        redis_client.hset(bad, mapping={"upvote": "1e3", "downvote": "0"})
    for _ in range(2):
        with pytest.raises(redis.ResponseError):
            storage.apply("e1", votes)
        assert redis_client.keys("*") == [bad]
    redis_client.delete(bad)
    assert tuple(storage.apply("e1", votes)) == (2, 0, 0)
    assert tuple(storage.apply("e1", votes)) == (0, 0, 0)
    assert storage.counts_many([(first, None), (other, None)]) == [
        {"postId": post, "upvote": 1, "downvote": 0, "score": 1} for post in (first, other)]


def test_an_event_on_a_post_key_written_by_something_else_is_dead_lettered_then_replayed(
        votes, dispatch, rpc, config, redis_client, tmp_path):
    """End to end: the event is dead-lettered with nothing written, the
    service goes on, and once the key is put right the replay counts each
    of its votes once."""
    first, other = two_buckets()
    bad = contracts.post_key(other)
    redis_client.set(bad, "x")
    event = make_event(make_vote(postId=first), make_vote(postId=other))
    dispatch(contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, event)
    (message,) = dead_letters(config["AMQP_URI"], 1)
    assert "WRONGTYPE" in message.headers["x-dead-letter-reason"]
    assert redis_client.keys("*") == [bad]
    cast(votes, dispatch, make_event(make_vote(postId="elsewhere")))
    assert rpc.get_counts("elsewhere")["upvote"] == 1

    redis_client.delete(bad)
    with Connection(config["AMQP_URI"]) as connection:
        Producer(connection.channel()).publish(
            json.loads(message.body), exchange=DEAD_LETTER_EXCHANGE,
            routing_key=DEAD_LETTERS.routing_key, headers=message.headers,
            serializer="json")
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    with entrypoint_waiter(votes, contracts.VOTE_CAST_HANDLER):
        assert dead_letter_tool.main(["replay", "--config", str(config_file)]) == 0
    assert [rpc.get_counts(post) for post in (first, other)] == [
        {"postId": post, "upvote": 1, "downvote": 0, "score": 1} for post in (first, other)]
