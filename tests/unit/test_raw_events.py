"""The raw path of a vote_cast body: msgspec's reading (parse_event_json)
takes exactly what the pydantic models take, and reads it the same; the
queue consumer hands such a body to the handler undecoded, and any other
the usual way."""
import json
from unittest import mock

import kombu
from hypothesis import given, settings
from hypothesis import strategies as st

from services import rules
from services.platform.events import DeadLetteringQueueConsumer
from services.votes import schemas
from services.votes.exceptions import InvalidVote
from services.votes.schemas import MAX_CREATED_AT
from tests.conftest import make_event, make_vote

FIELDS = ("voteId", "postId", "score", "voterId", "ts", "key", "fp", "createdAt")
ODD = st.sampled_from([None, True, 1, 1.0, -1, "", " ", [], {}, "a\n", "\na", "é", "a b"])
IDS = st.one_of(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), st.just("x" * 65), ODD)
HEX = st.one_of(st.from_regex(r"\A[0-9a-f]{32}\Z"), st.from_regex(r"\A[0-9a-f]{16}\Z"),
                st.just("A" * 32), st.just("0" * 32 + "\n"), ODD)
INTS = st.one_of(st.integers(min_value=-3, max_value=2 ** 54),
                 st.sampled_from([2 ** 53 - 1, 2 ** 53, MAX_CREATED_AT, MAX_CREATED_AT + 1]),
                 st.floats(allow_nan=False, allow_infinity=False), ODD)
VALUES = {"voteId": IDS, "postId": IDS, "voterId": IDS, "key": HEX, "fp": HEX,
          "score": st.one_of(st.sampled_from([1, -1, 0, 2, -2]), ODD),
          "ts": INTS, "createdAt": INTS}


VALID = {"voteId": IDS.filter(lambda v: isinstance(v, str)), "score": st.sampled_from([1, -1])}


@st.composite
def events(draw):
    """A valid event, then none, one or two faults: a field set to another
    value (valid or not), dropped, or one added."""
    votes = []
    for _ in range(draw(st.integers(1, 3))):
        vote = make_vote(voteId=draw(VALID["voteId"]), score=draw(VALID["score"]))
        if draw(st.booleans()):
            vote.update(voterId="v1", score=draw(st.sampled_from([1, -1, 0])))
        if draw(st.booleans()):
            vote.update(key="0" * 32, fp="f" * 16)
        if draw(st.booleans()):
            vote["createdAt"] = draw(st.integers(0, MAX_CREATED_AT))
        votes.append(vote)
    event = make_event(*votes)
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from([event] + votes))
        fields = ("id", "votes") if target is event else FIELDS
        field = draw(st.sampled_from(fields))
        fault = draw(st.integers(0, 9))
        if fault == 0:
            target.pop(field, None)
        elif fault == 1:
            target["extra"] = 1
        elif target is event:
            target[field] = draw(IDS if field == "id" else ODD)
        else:
            target[field] = draw(VALUES[field])
    return event


def read(event):
    return event.id, [tuple(getattr(vote, field) for field in FIELDS) for vote in event.votes]


@settings(max_examples=3000, deadline=None)
@given(events())
def test_the_raw_reading_takes_what_the_models_take_and_reads_it_the_same(event):
    raw = json.dumps(event).encode()
    try:
        slow = read(schemas.parse_event(json.loads(raw)))
    except InvalidVote:
        slow = None
    fast = schemas.parse_event_json(raw)
    assert (None if fast is None else read(fast)) == slow


def test_the_raw_id_check_is_the_id_pattern():
    # _RawID's length and _RAW_IDS's characters
    assert rules.ID_PATTERN == r"^[A-Za-z0-9_-]{1,64}$"


def test_valid_events_of_every_shape_are_taken_raw():
    event = make_event(make_vote(), make_vote(score=-1, voterId="v1"),
                       make_vote(score=0, voterId="v2", createdAt=MAX_CREATED_AT),
                       make_vote(key="0" * 32, fp="f" * 16))
    raw = json.dumps(event).encode()
    assert read(schemas.parse_event_json(raw)) == read(schemas.parse_event(event))
    # a duplicate key: the last one counts, as in json.loads
    assert schemas.parse_event_json(raw[:1] + b'"id": "first", ' + raw[1:]).id == event["id"]
    for bad in (b"\xef\xbb\xbf" + raw, raw + b" x", raw[:-1], b"[]", b"null"):
        assert schemas.parse_event_json(bad) is None


def message(body, channel, tag=1, **properties):
    return kombu.Message(body=body, delivery_tag=tag, channel=channel,
                         delivery_info={"routing_key": "vote_cast"}, **properties)


def test_the_consumer_hands_a_plain_json_body_over_undecoded():
    consumer = DeadLetteringQueueConsumer()
    consumer.container = mock.Mock()
    channel = mock.Mock()
    consumer._channel, consumer._unacked = channel, {}
    provider = mock.Mock(spec=["parse_raw", "handle_payload", "handle_message",
                               "dead_letter"])
    event = make_event()
    raw = json.dumps(event).encode()
    provider.parse_raw.side_effect = lambda m: schemas.parse_event_json(m.body)

    taken = message(raw, channel, content_type="application/json",
                    content_encoding="utf-8")
    consumer._on_raw_message(provider, taken)
    (payload, handed), _ = provider.handle_payload.call_args
    assert handed is taken and read(payload) == read(schemas.parse_event(event))
    assert taken._decoded_cache is None and list(consumer._unacked) == [1]
    consumer.container.spawn_managed_thread.assert_not_called()

    # refused raw: decoded by kombu, then handle_message from a thread
    refused = message(b'{"id": 1}', channel, tag=2, content_type="application/json",
                      content_encoding="utf-8")
    consumer._on_raw_message(provider, refused)
    (work,), _ = consumer.container.spawn_managed_thread.call_args
    assert work.func == provider.handle_message and work.args == ({"id": 1}, refused)

    # undecodable: dead-lettered with kombu's reason
    broken = message(b"{", channel, tag=3, content_type="application/json",
                     content_encoding="utf-8")
    consumer._on_raw_message(provider, broken)
    (work,), _ = consumer.container.spawn_managed_thread.call_args
    assert work.func == provider.dead_letter and work.args[0] is broken
    assert work.args[1].startswith("undecodable body: DecodeError: ")
    assert list(consumer._unacked) == [1, 2, 3]
