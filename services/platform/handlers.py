"""An ``event_handler`` that neither loses nor jams on a message.

Nameko's own handler acks a message whose handler raised, so a message is
lost whenever the store its handler writes to is down, and a body that
cannot be decoded stops the consumer.
This one:

* validates the payload before any worker runs; a message that fails (or
  cannot be decoded at all) goes to the dead-letter queue with the reason,
  and is acked;
* retries a worker that failed with a transient error (``retry_on``) with
  capped exponential back-off, keeping the message unacked meanwhile, so a
  crash during the wait redelivers it; on shutdown it requeues instead;
* dead-letters a message whose worker kept failing with anything else.

Its queue consumer (services.platform.consumers) also survives the broker
going away, and moves to another node of a cluster; its queues are of the
type AMQP_QUEUE_TYPE names (services.platform.brokers).
"""
import logging
import random
from functools import partial

import eventlet
from eventlet.event import Event
from nameko.events import EventHandler

from services.platform import brokers, correlation
from services.platform.batching import GroupCommit
from services.platform.consumers import DeadLetteringQueueConsumer
from services.platform.dead_lettering import copy_to_dead_letters, dead_letter_link

_log = logging.getLogger(__name__)

RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 5.0
MAX_UNEXPECTED_FAILURES = 5


def backoff(attempt):
    """Seconds before retry ``attempt`` (1, 2, ...): exponential, capped,
    jittered so that waiting workers do not retry in step."""
    delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)



def _nothing(*args):
    return {}


class ReliableEventHandler(EventHandler):
    """nameko's ``event_handler``, which acks a message whose worker raised
    (a vote is lost whenever Redis is down) and lets a body that cannot be
    decoded stop the consumer. This one validates each body before any
    worker runs, retries transient failures with back-off while the message
    stays unacked, and dead-letters what it cannot handle (see the module
    docstring). Its queue consumer survives a lost broker."""

    queue_consumer = DeadLetteringQueueConsumer()

    def __init__(self, source_service, event_type, schema, dead_letter_queue,
                 retry_on=(), on_retry=None, on_dead_letter=None,
                 failed_headers=None, raw_schema=None, **kwargs):
        """``schema(body)`` returns what the handler receives, or raises
        ValueError to dead-letter the message. ``raw_schema(raw)``, if
        given, does the same from a JSON body's bytes, or returns None for
        ``schema`` to decide. ``dead_letter_queue`` (see
        dead_letter_queue()) is where such messages go. ``on_retry()`` and
        ``on_dead_letter()`` are called for each retry and dead letter (for
        metrics); ``failed_headers(container, payload)`` returns headers to
        add to a message dead-lettered after its worker kept failing."""
        self.schema = schema
        self.dead_letter_queue = dead_letter_queue
        self.retry_on = tuple(retry_on)
        self.on_retry = on_retry or _nothing
        self.on_dead_letter = on_dead_letter or _nothing
        self.failed_headers = failed_headers or _nothing
        self.raw_schema = raw_schema
        self._stopping = False
        super().__init__(source_service, event_type, **kwargs)

    def setup(self):
        super().setup()
        self._stopping = False
        config = self.container.config
        self.queue = brokers.typed(self.queue, config)
        self.dead_letter_queue = brokers.typed(self.dead_letter_queue, config)
        self.also_declares = (self.dead_letter_queue,)
        self.dead_letter_publisher = dead_letter_link(config, self.dead_letter_queue)

    def stop(self):
        self._stopping = True
        super().stop()

    def kill(self):
        super().kill()
        self.dead_letter_publisher.reset()

    def handle_message(self, body, message):
        try:
            payload = self.schema(body)
        except ValueError as exc:
            self.dead_letter(message, "invalid payload: {}".format(exc))
            return
        # the decoded body is not needed again (a dead letter copies the raw
        # one): up to MAX_WORKERS events wait with their messages
        message._decoded_cache = None
        self._spawn(payload, message, attempt=1)

    def parse_raw(self, message):
        """The payload of a plain JSON body by ``raw_schema``, or None."""
        accept = message.accept
        if (message.content_type != "application/json"
                or message.content_encoding not in ("utf-8", "utf8")
                or (message.headers or {}).get("compression")
                or (accept is not None and "application/json" not in accept)):
            return None
        try:
            return self.raw_schema(message.body)
        except Exception:  # the usual way then tells
            return None

    def handle_payload(self, payload, message):
        """A payload parse_raw took, in the consume loop: to a worker from a
        thread of its own (a spawn waits while the worker pool is full)."""
        self.container.spawn_managed_thread(
            partial(self._spawn, payload, message, 1))

    def _spawn(self, payload, message, attempt):
        if self._stopping:
            self.queue_consumer.requeue_message(message)
            return
        self.container.spawn_worker(
            self, (payload,), {},
            context_data=self.unpack_message_headers(message),
            handle_result=partial(self._handle_result, message, attempt),
        )

    def _handle_result(self, message, attempt, worker_ctx, result=None,
                       exc_info=None):
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            self.log_requests(worker_ctx.args[0], message)
            return result, exc_info

        self._failed(worker_ctx.args[0], message, attempt, exc_info[1])
        return result, exc_info

    def log_requests(self, payload, message):
        """One line for a handled message that names the requests it came
        from (correlation): the other end of the publisher's line."""
        ids = correlation.ids_of(message.headers)
        if ids:
            correlation.log.info("%s %s handled: requests %s", self.event_type,
                                 getattr(payload, "id", None), " ".join(ids))

    def _failed(self, payload, message, attempt, exc):
        """A transient failure is retried after a back-off; another is
        too, until the MAX_UNEXPECTED_FAILURES-th, which is dead-lettered."""
        if not isinstance(exc, self.retry_on) and attempt >= MAX_UNEXPECTED_FAILURES:
            self.dead_letter(message, "handler failed {} times: {}: {}".format(
                attempt, type(exc).__name__, exc), event=payload)
        else:
            self.on_retry()
            self.container.spawn_managed_thread(
                partial(self._retry, payload, message, attempt + 1))

    def _retry(self, payload, message, attempt):
        eventlet.sleep(backoff(attempt - 1))
        self._spawn(payload, message, attempt)

    def dead_letter(self, message, reason, event=None):
        """Copy the message to the dead-letter queue with the reason, then
        ack it. If the copy fails the message is requeued, never dropped.

        ``event`` is the parsed payload of a message whose handler kept
        failing: ``failed_headers`` adds what the service knows about it
        (whether it was applied, say)."""
        delivery = message.delivery_info
        extra = self.failed_headers(self.container, event) if event is not None else {}
        try:
            copy_to_dead_letters(self.dead_letter_publisher,
                                 self.dead_letter_queue, message, reason, extra)
        except Exception as exc:
            _log.error("could not dead-letter a message (%s); requeued", exc)
            eventlet.sleep(1)
            self.queue_consumer.requeue_message(message)
            return
        self.on_dead_letter()
        ids = correlation.ids_of(message.headers)
        _log.warning("dead-lettered a %s message%s: %s%s",
                     delivery.get("routing_key"),
                     " of requests " + " ".join(ids) if ids else "", reason,
                     " ({})".format(", ".join("{} {}".format(name, value)
                                             for name, value in extra.items()))
                     if extra else "")
        self.queue_consumer.ack_message(message)


event_handler = ReliableEventHandler.decorator


class BatchEventHandler(ReliableEventHandler):
    """ReliableEventHandler whose method takes a list of events: those that
    arrived while earlier batches were in their workers, up to
    ``max_weight`` (``weigh(payload)`` each), with at most ``in_flight``
    batches in workers at once. So nameko's cost of a worker (its thread,
    context, dependencies and hooks) is paid once a batch, not once a
    message, and a batch grows with the load.

    The method returns one outcome per event, in order: an exception for an
    event that failed, which is then retried or dead-lettered on its own as
    ReliableEventHandler does; anything else for an event that is done. If
    the method raises, every event of the batch failed with that. The done
    events' messages are acked together when the batch ends."""

    def __init__(self, *args, max_weight, weigh=lambda payload: 1, in_flight=2,
                 **kwargs):
        self.max_weight = max_weight
        self.weigh = weigh
        self.in_flight = in_flight
        self.batches = None
        super().__init__(*args, **kwargs)

    def setup(self):
        super().setup()
        self.batches = GroupCommit(self._run_batch, max_weight=self.max_weight,
                                   max_wait=float("inf"),
                                   weigh=lambda entry: self.weigh(entry[0]))

    def start(self):
        super().start()
        for _ in range(self.in_flight):
            self.container.spawn_managed_thread(self.batches.run)

    def stop(self):
        super().stop()  # no new messages come after this
        for _, message, _ in self.batches.drain():
            self.queue_consumer.requeue_message(message)

    def _spawn(self, payload, message, attempt):
        if self._stopping:
            self.queue_consumer.requeue_message(message)
            return
        self.batches.put((payload, message, attempt))

    def handle_payload(self, payload, message):
        self._spawn(payload, message, 1)  # never waits

    def _run_batch(self, entries):
        """GroupCommit's flush: one worker for the batch, waited for, so
        that each flusher has one batch in a worker at a time."""
        if self._stopping:
            for _, message, _ in entries:
                self.queue_consumer.requeue_message(message)
            return [None] * len(entries)
        done = Event()
        self.container.spawn_worker(
            self, ([payload for payload, _, _ in entries],), {},
            context_data=self.unpack_message_headers(entries[0][1]),
            handle_result=partial(self._batch_result, entries, done))
        done.wait()
        return [None] * len(entries)

    def _batch_result(self, entries, done, worker_ctx, result=None, exc_info=None):
        try:
            if exc_info is not None:
                outcomes = [exc_info[1]] * len(entries)
            elif not isinstance(result, list) or len(result) != len(entries):
                outcomes = [RuntimeError("{} outcomes for {} events".format(
                    len(result) if isinstance(result, list) else type(result).__name__,
                    len(entries)))] * len(entries)
            else:
                outcomes = result
            finished = []
            for (payload, message, attempt), outcome in zip(entries, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    if exc_info is None:  # nameko logged a raised one
                        _log.warning("an event of a batch failed: %r", outcome)
                    self._failed(payload, message, attempt, outcome)
                else:
                    finished.append(message)
                    self.log_requests(payload, message)
            self.queue_consumer.ack_messages(finished)
        finally:
            done.send()
        return result, exc_info

