"""The votes service and its event entrypoint, with fakes (no broker, no Redis)."""
import json
from unittest import mock

import kombu
import pytest
from nameko.testing.services import worker_factory

from services import contracts, rules
from services.platform import handlers
from services.platform.handlers import ReliableEventHandler, backoff
from services.votes import schemas
from services.votes.exceptions import InvalidVote, StoreUnavailable
from services.votes.service import VotesService
from services.votes.store import Applied
from tests.conftest import make_event, make_vote
from tests.unit.handlers import bound_event_handler


def test_handler_applies_a_batch_in_one_call_and_returns_each_outcome():
    service = worker_factory(VotesService)
    first = schemas.parse_event(make_event(make_vote(), make_vote(score=-1)))
    second = schemas.parse_event(make_event(make_vote(postId="9")))
    failed = StoreUnavailable("OOM")
    service.store.apply_group.return_value = [Applied(2, 0, 0), failed]

    assert service.handle_vote_cast([first, second]) == [Applied(2, 0, 0), failed]

    service.store.apply_group.assert_called_once_with(
        [(first.id, first.votes), (second.id, second.votes)])
    # only the applied event's posts are announced
    (changed,), _ = service.counts_changed.call_args
    assert list(changed) == ["348", "348"]
    service.counts_changed.assert_called_once()


def test_rpc_vote_goes_through_apply_and_returns_counts():
    service = worker_factory(VotesService, request_id="c0ffee")
    service.store.apply.return_value = Applied(1, 0, 0)
    service.store.counts.return_value = {"postId": "348"}

    assert service.vote("348", -1, voter_id="ann") == {"postId": "348"}
    ((event_id, (vote,)), _) = service.store.apply.call_args
    # the mark is the request's: a redelivered request finds it
    assert event_id == "rpc-c0ffee"
    assert (vote.voteId, vote.postId, vote.score, vote.voterId, vote.key) == (
        "c0ffee", "348", -1, "ann", None)
    service.store.counts.assert_called_once_with("348", "ann")


def test_rpc_vote_with_an_idempotency_key_carries_its_id_and_fingerprint():
    service = worker_factory(VotesService, request_id="c0ffee")
    service.store.apply.return_value = Applied(1, 0, 0)

    service.vote("348", 1, idempotency_key="order-17")
    ((_, (vote,)), _) = service.store.apply.call_args
    assert vote.voteId == vote.key == rules.key_id("order-17")
    assert vote.fp == rules.fingerprint([("348", 1, None)])


@pytest.mark.parametrize("call, message", [
    (lambda s: s.vote("348", 2), "score: Input should be 1, -1 or 0"),
    (lambda s: s.vote("348", 0), "Value error, score 0 (retraction) needs a voterId"),
    (lambda s: s.vote("348", 1, idempotency_key=""),
     "idempotency_key: must be 1-128 visible ASCII characters"),
    (lambda s: s.vote("348", 1, idempotency_key="a b"),
     "idempotency_key: must be 1-128 visible ASCII characters"),
    (lambda s: s.vote("348", 1, idempotency_key="k" * 129),
     "idempotency_key: must be 1-128 visible ASCII characters"),
    (lambda s: s.vote("348", 1, idempotency_key=17),
     "idempotency_key: must be 1-128 visible ASCII characters"),
    (lambda s: s.get_counts("3 4"), "post_id: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    (lambda s: s.get_counts("1", voter_id=""),
     "voter_id: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    (lambda s: s.top(True), "limit: must be an integer from 1 to 100"),
    (lambda s: s.get_counts_many([["1", None]] * 1001),
     "List should have at most 1000 items after validation, not 1001"),
])
def test_rpc_refuses_bad_arguments(call, message):
    service = worker_factory(VotesService, request_id="c0ffee")
    with pytest.raises(InvalidVote) as error:
        call(service)
    assert message in str(error.value)
    service.store.apply.assert_not_called()


@pytest.mark.parametrize("votes", [
    (make_vote(),), {make_vote()["voteId"]}, {"0": make_vote()}, "[]",
])
def test_an_event_takes_its_votes_as_a_list_only(votes):
    with pytest.raises(InvalidVote) as error:
        schemas.parse_event({"id": "e1", "votes": votes})
    assert str(error.value) == "votes: Input should be a valid list"


@pytest.mark.parametrize("attempt, low, high", [
    (1, 0.05, 0.1), (2, 0.1, 0.2), (5, 0.8, 1.6), (7, 2.5, 5.0), (40, 2.5, 5.0),
])
def test_backoff_grows_and_is_capped(attempt, low, high):
    for _ in range(50):
        assert low <= backoff(attempt) <= high


@pytest.fixture
def handler(mock_container):
    return bound_event_handler(mock_container, ReliableEventHandler)


def test_invalid_payload_never_reaches_a_worker(handler, mock_container):
    message = mock.Mock(headers={}, delivery_info={"routing_key": contracts.VOTE_CAST})
    handler.handle_message({"votes": []}, message)

    mock_container.spawn_worker.assert_not_called()
    (body,), kwargs = handler.dead_letter_publisher.publish.call_args
    assert body is message.body
    assert kwargs["headers"]["x-dead-letter-reason"].startswith(
        "invalid payload: id: Field required")
    handler.queue_consumer.ack_message.assert_called_once_with(message)


def test_a_valid_event_waits_for_its_worker_as_slotted_votes(handler, mock_container):
    """What a waiting event holds: its raw body (for a dead letter) and
    its parsed votes, without __dict__; not the decoded body."""
    message = kombu.Message(body=b'{}', headers={},
                            delivery_info={"routing_key": contracts.VOTE_CAST})
    event = make_event(make_vote(), make_vote(voterId="v1"))
    message._decoded_cache = event
    handler.handle_message(event, message)

    (_, (payload,), _), _ = mock_container.spawn_worker.call_args
    assert payload.id == event["id"]
    assert [(v.voteId, v.voterId) for v in payload.votes] == [
        (v["voteId"], v.get("voterId")) for v in event["votes"]]
    assert not any(hasattr(v, "__dict__") for v in payload.votes)
    assert message._decoded_cache is None and message.body == b'{}'


def test_a_raw_payload_reaches_its_worker_from_a_thread_of_its_own(mock_container):
    """ReliableEventHandler with a ``raw_schema``: a plain JSON body is read
    by it, and handed to a worker from a managed thread (the consume loop
    must not wait for a free worker); any other body is left to ``schema``."""
    handler = bound_event_handler(mock_container, ReliableEventHandler,
                                  raw_schema=schemas.parse_event_json)
    event = make_event(make_vote(), make_vote(voterId="v1"))
    body = json.dumps(event).encode()
    message = kombu.Message(body=body, content_type="application/json",
                            content_encoding="utf-8", headers={},
                            delivery_info={"routing_key": contracts.VOTE_CAST})
    payload = handler.parse_raw(message)
    assert (payload.id, [v.voteId for v in payload.votes]) == (
        event["id"], [v["voteId"] for v in event["votes"]])
    for other in (dict(content_type="application/x-python-serialize"),
                  dict(content_encoding="binary"),
                  dict(headers={"compression": "application/x-gzip"})):
        fields = dict(body=body, content_type="application/json",
                      content_encoding="utf-8", headers={})
        fields.update(other)
        assert handler.parse_raw(kombu.Message(**fields)) is None
    assert handler.parse_raw(kombu.Message(
        body=b'{"votes": []}', content_type="application/json",
        content_encoding="utf-8", headers={})) is None

    handler.handle_payload(payload, message)
    mock_container.spawn_worker.assert_not_called()
    (thread,), _ = mock_container.spawn_managed_thread.call_args
    thread()
    (_, (worker_payload,), _), _ = mock_container.spawn_worker.call_args
    assert worker_payload is payload


def test_transient_failure_is_retried_not_acked(handler, mock_container):
    message = mock.Mock()
    worker_ctx = mock.Mock(args=("payload",))
    handler._handle_result(message, 1, worker_ctx,
                           exc_info=(StoreUnavailable, StoreUnavailable("down"), None))

    handler.queue_consumer.ack_message.assert_not_called()
    handler.dead_letter_publisher.publish.assert_not_called()
    mock_container.spawn_managed_thread.assert_called_once()


def test_repeated_unexpected_failure_is_dead_lettered(handler):
    message = mock.Mock(headers={}, delivery_info={"routing_key": contracts.VOTE_CAST})
    handler._handle_result(
        message, handlers.MAX_UNEXPECTED_FAILURES, mock.Mock(args=("p",)),
        exc_info=(KeyError, KeyError("bug"), None))

    _, kwargs = handler.dead_letter_publisher.publish.call_args
    assert kwargs["headers"]["x-dead-letter-reason"] == (
        "handler failed 5 times: KeyError: 'bug'")
    handler.queue_consumer.ack_message.assert_called_once_with(message)


def test_retry_after_stop_requeues(handler, mock_container):
    handler._stopping = True
    message = mock.Mock()
    handler._spawn("payload", message, attempt=2)
    mock_container.spawn_worker.assert_not_called()
    handler.queue_consumer.requeue_message.assert_called_once_with(message)


def test_failed_dead_letter_copy_requeues(handler, monkeypatch):
    monkeypatch.setattr(handlers.eventlet, "sleep", lambda seconds: None)
    handler.dead_letter_publisher.publish.side_effect = ConnectionError("down")
    message = mock.Mock(headers={}, delivery_info={})
    handler.dead_letter(message, "why")
    handler.queue_consumer.ack_message.assert_not_called()
    handler.queue_consumer.requeue_message.assert_called_once_with(message)
