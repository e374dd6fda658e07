"""The raw path of a vote_cast body: msgspec's reading (parse_event_json)
takes events of every shape and no id that breaks the rule (the property
test against the models is test_event_parser_differential.py); the queue
consumer hands such a body to the handler undecoded, and any other the
usual way."""
import json
from unittest import mock

import kombu

from services import rules
from services.platform.consumers import DeadLetteringQueueConsumer
from services.votes import schemas
from services.votes.schemas import MAX_CREATED_AT
from tests.conftest import make_event, make_vote

FIELDS = ("voteId", "postId", "score", "voterId", "ts", "key", "fp", "createdAt")


def read(event):
    return event.id, [tuple(getattr(vote, field) for field in FIELDS) for vote in event.votes]


def test_the_raw_id_check_is_the_id_pattern():
    # _RawID's length and rules.ID_RUN's characters, for ids joined with
    # nothing between them (tests/unit/test_event_parser_differential.py
    # checks every reader against the models on generated events)
    assert rules.ID_PATTERN == r"^[A-Za-z0-9_-]{1,64}$"
    assert rules.ID_RUN.pattern == "[A-Za-z0-9_-]*"
    assert rules.ID.pattern == "[A-Za-z0-9_-]{1,64}"


def test_an_id_with_a_newline_is_not_taken_raw():
    for bad in ("1\n2", "1\n", "\n1", "1\r\n2", "1\u20282"):
        for field in ("voteId", "postId", "voterId"):
            event = make_event(make_vote(**{"voterId": "v1", field: bad}))
            assert schemas.parse_event_json(json.dumps(event).encode()) is None
        event = make_event(make_vote())
        event["id"] = bad
        assert schemas.parse_event_json(json.dumps(event).encode()) is None


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
