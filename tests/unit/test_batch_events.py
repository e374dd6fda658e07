"""BatchEventHandler with a fake container and queue consumer: batches,
each event's outcome, and what a stop leaves."""
from unittest import mock

import pytest

from services import contracts
from services.platform import handlers
from services.platform.handlers import BatchEventHandler
from services.votes.exceptions import StoreUnavailable
from tests.conftest import make_event, make_vote
from tests.unit.handlers import bound_event_handler


@pytest.fixture
def handler(mock_container):
    return bound_event_handler(mock_container, BatchEventHandler, setup=True, max_weight=5,
                               weigh=lambda event: len(event.votes))


def worker_returns(container, outcome):
    """spawn_worker runs the 'method' at once: ``outcome(events)`` is its
    result, or raises."""
    batches = []

    def spawn_worker(entrypoint, args, kwargs, context_data, handle_result):
        (payloads,) = args
        batches.append([payload.id for payload in payloads])
        worker_ctx = mock.Mock(args=args)
        try:
            result = outcome(payloads)
        except Exception as exc:
            handle_result(worker_ctx, None, (type(exc), exc, None))
        else:
            handle_result(worker_ctx, result)
    container.spawn_worker.side_effect = spawn_worker
    return batches


def deliver(handler, *votes_per_event):
    """A message for each event (of that many votes), handed to the handler;
    returns [(event id, message)]."""
    delivered = []
    for count in votes_per_event:
        event = make_event(*[make_vote() for _ in range(count)])
        message = mock.Mock(headers={}, delivery_info={"routing_key": contracts.VOTE_CAST})
        handler.handle_message(event, message)
        delivered.append((event["id"], message))
    return delivered


def run_batches(handler):
    """What the flushers do, until nothing is queued."""
    carry = None
    while carry is not None or not handler.batches.queue.empty():
        group, carry = handler.batches._take(carry)
        handler.batches.flush_once(group, handler._run_batch)


def test_events_waiting_together_go_to_one_worker_up_to_the_weight(handler, mock_container):
    batches = worker_returns(mock_container, lambda events: [None] * len(events))
    delivered = deliver(handler, 2, 2, 1, 3, 5)

    run_batches(handler)

    ids = [event_id for event_id, _ in delivered]
    # 2+2+1 votes, then 3 (3+5 would pass 5), then 5
    assert batches == [ids[:3], ids[3:4], ids[4:]]
    assert handler.queue_consumer.ack_messages.call_args_list == [
        mock.call([message for _, message in delivered[:3]]),
        mock.call([delivered[3][1]]), mock.call([delivered[4][1]])]
    mock_container.spawn_managed_thread.assert_not_called()


def test_an_event_that_failed_is_retried_alone_and_the_rest_acked(handler, mock_container):
    batches = worker_returns(mock_container, lambda events: [
        None, StoreUnavailable("down"), None])
    (_, first), (second_id, second), (_, third) = deliver(handler, 1, 1, 1)

    run_batches(handler)

    assert len(batches) == 1
    handler.queue_consumer.ack_messages.assert_called_once_with([first, third])
    handler.queue_consumer.requeue_message.assert_not_called()
    (retry,), _ = mock_container.spawn_managed_thread.call_args
    assert retry.func == handler._retry
    payload, message, attempt = retry.args
    assert (payload.id, message, attempt) == (second_id, second, 2)


def test_a_retried_event_joins_a_later_batch(handler, mock_container, monkeypatch):
    monkeypatch.setattr(handlers.eventlet, "sleep", lambda seconds: None)
    outcomes = iter([[StoreUnavailable("down")], [None, None]])
    batches = worker_returns(mock_container, lambda events: next(outcomes))
    ((first_id, first),) = deliver(handler, 1)
    run_batches(handler)
    ((second_id, second),) = deliver(handler, 1)

    (retry,), _ = mock_container.spawn_managed_thread.call_args
    retry()  # after its back-off: queued again, behind the second event
    run_batches(handler)

    assert batches == [[first_id], [second_id, first_id]]
    handler.queue_consumer.ack_messages.assert_called_with([second, first])


def test_an_event_that_keeps_failing_is_dead_lettered_with_its_reason(handler, mock_container):
    worker_returns(mock_container, lambda events: [KeyError("bug")])
    ((_, message),) = deliver(handler, 1)
    (payload, _, _), = handler.batches.drain()

    handler._run_batch([(payload, message, handlers.MAX_UNEXPECTED_FAILURES)])

    _, kwargs = handler.dead_letter_publisher.publish.call_args
    assert kwargs["headers"]["x-dead-letter-reason"] == (
        "handler failed 5 times: KeyError: 'bug'")
    handler.queue_consumer.ack_message.assert_called_once_with(message)
    handler.queue_consumer.ack_messages.assert_called_once_with([])


def test_a_method_that_raises_fails_every_event_of_the_batch(handler, mock_container):
    def fail(events):
        raise StoreUnavailable("down")
    worker_returns(mock_container, fail)
    delivered = deliver(handler, 1, 1)

    run_batches(handler)

    handler.queue_consumer.ack_messages.assert_called_once_with([])
    retried = [call.args[0].args[1] for call in mock_container.spawn_managed_thread.call_args_list]
    assert retried == [message for _, message in delivered]


@pytest.mark.parametrize("result, reason", [
    ([None], "1 outcomes for 2 events"),
    (None, "NoneType outcomes for 2 events"),
])
def test_a_result_that_does_not_match_the_batch_fails_every_event(
        handler, mock_container, result, reason, caplog):
    worker_returns(mock_container, lambda events: result)
    deliver(handler, 1, 1)

    run_batches(handler)

    handler.queue_consumer.ack_messages.assert_called_once_with([])
    assert mock_container.spawn_managed_thread.call_count == 2
    assert caplog.text.count("RuntimeError('{}')".format(reason)) == 2


def test_stop_requeues_what_waits_and_what_comes_after(handler, mock_container):
    worker_returns(mock_container, lambda events: [None] * len(events))
    delivered = deliver(handler, 1, 1)

    handler.stop()
    ((_, late),) = deliver(handler, 1)
    handler._run_batch([])  # a flusher that took a group just before

    assert handler.queue_consumer.requeue_message.call_args_list == [
        mock.call(message) for message in [m for _, m in delivered] + [late]]
    mock_container.spawn_worker.assert_not_called()


def test_a_group_taken_before_the_stop_is_requeued_not_run(handler, mock_container):
    delivered = deliver(handler, 1, 1)
    group, _ = handler.batches._take(None)
    handler._stopping = True

    handler.batches.flush_once(group, handler._run_batch)

    mock_container.spawn_worker.assert_not_called()
    assert handler.queue_consumer.requeue_message.call_args_list == [
        mock.call(message) for _, message in delivered]
