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

Its queue consumer (and the one of ``rpc`` here) also survives the broker
going away, and moves to another node of a cluster: see
ResilientQueueConsumer. Both declare their queues of the type
AMQP_QUEUE_TYPE names (services.platform.brokers).
"""
import hashlib
import logging
import random
import sys
import time
from contextlib import contextmanager
from functools import partial

import amqp
import eventlet
import nameko.rpc
from eventlet.event import Event
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.serialization import registry
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.contextdata import ContextDataProvider
from nameko.events import EventHandler
from nameko.exceptions import MalformedRequest
from nameko.messaging import QueueConsumer, QueueConsumerStopped
from nameko.rpc import get_rpc_exchange
from prometheus_client import Counter

from services.platform import brokers
from services.platform.batching import GroupCommit
from services.platform.brokers import (
    STALL_AFTER,
    STALL_ANSWER_TIMEOUT,
    STALL_CHECK_INTERVAL,
)
from services.platform.container import RABBITMQ, done_waiting, waiting_for

_log = logging.getLogger(__name__)

RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 5.0
MAX_UNEXPECTED_FAILURES = 5
RECONNECT_INTERVAL = 1.0  # seconds between attempts to reach the broker
KILL_WAIT = 1.0  # seconds a killed consumer's loop has to end by itself
START_POLL_INTERVAL = 0.01  # seconds between two looks at a starting consumer
CANCEL_WAIT = 3.0  # seconds a stop waits for the broker to cancel a consumer
# seconds the consume loop waits for a frame before it looks at should_stop:
# kombu's 1 s made every stop and kill of the service take a second
STOP_POLL_INTERVAL = 0.05
LOST_CONNECTION = amqp.Connection.connection_errors + amqp.Connection.channel_errors

# headers of a dead-lettered message (read by a replay tool)
REASON_HEADER = "x-dead-letter-reason"
ORIGIN_EXCHANGE_HEADER = "x-original-exchange"
ORIGIN_ROUTING_KEY_HEADER = "x-original-routing-key"
DEAD_LETTERED_AT_HEADER = "x-dead-lettered-at"


class StopWaiting(Exception):
    """The service stops while its consumer waits for the broker."""


def dead_letter_queue(exchange, queue, routing_key):
    """A durable dead-letter queue on a direct exchange of its own."""
    return Queue(queue, exchange=Exchange(exchange, type="direct", durable=True),
                 routing_key=routing_key, durable=True, auto_delete=False)


def copy_to_dead_letters(publisher, queue, message, reason, extra=None):
    """Publish a copy of ``message`` to the dead-letter ``queue`` with
    headers that say why (``reason``) and where it came from; raises what
    the publish raises."""
    delivery = message.delivery_info
    headers = dict(message.headers or {})
    headers.update({
        REASON_HEADER: reason[:1000],
        ORIGIN_EXCHANGE_HEADER: delivery.get("exchange"),
        ORIGIN_ROUTING_KEY_HEADER: delivery.get("routing_key"),
        DEAD_LETTERED_AT_HEADER: int(time.time()),
    })
    headers.update(extra or {})
    publisher.publish(
        message.body,
        exchange=queue.exchange,
        routing_key=queue.routing_key,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        retry=False,
    )


def backoff(attempt):
    """Seconds before retry ``attempt`` (1, 2, ...): exponential, capped,
    jittered so that waiting workers do not retry in step."""
    delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class ResilientQueueConsumer(QueueConsumer):
    """nameko's QueueConsumer, fixed for a broker that goes away:

    * an ack or requeue on a connection that just died is dropped (the
      broker redelivers the message); nameko catches only amqp's
      ConnectionError there, so a socket error killed the container;
    * it retries every RECONNECT_INTERVAL seconds: kombu backs off up to
      30 s, past the 10 s recovery bound;
    * it can stop while the broker is away: nameko waits for the broker
      to come back to cancel its consumers, so SIGTERM hung;
    * with several nodes in AMQP_URI it tries each in turn: kombu's
      ``ensure_connection(max_retries=0)`` never leaves the first;
    * a queue that exists as another type than AMQP_QUEUE_TYPE stops the
      service at start with a message that says so (brokers); found
      later (the broker was away at start), it is logged as such on each
      attempt, where kombu's consume loop calls it a lost connection;
    * it stops within STOP_POLL_INTERVAL of being asked, not kombu's 1 s;
    * a stop or kill ends even when the broker stops answering on the
      consumer's channel (CANCEL_WAIT, KILL_WAIT): nameko's waited for ever.
    """

    def __init__(self):
        super().__init__()
        self._broker_away = False
        self._unanswered = False
        self._channel = None
        self._held = set()  # delivery tags of the channel's messages in work
        self._quiet_since = {}  # provider -> its last delivery, or (re)consume
        self._next_check = 0.0
        self._stop_asked = Event()  # wakes the wait between two connects

    def consume(self, *args, **kwargs):
        kwargs.setdefault("safety_interval", STOP_POLL_INTERVAL)
        return super().consume(*args, **kwargs)

    def handle_message(self, provider, body, message):
        self._delivered(provider, message)
        super().handle_message(provider, body, message)

    def _delivered(self, provider, message):
        if message.channel is self._channel:
            self._held.add(message.delivery_tag)
            self._quiet_since[provider] = time.monotonic()

    def _settled(self, message):
        if message.channel is self._channel:
            self._held.discard(message.delivery_tag)

    def _in_flight(self):
        return len(self._held)

    def on_iteration(self):
        """Each turn of the consume loop: a consumer the broker stopped
        serving is replaced. A quorum queue's consumer that came back while
        the queue elected a new leader was once seen to get nothing for
        over a minute, its queue holding thousands of votes."""
        super().on_iteration()
        now = time.monotonic()
        if now < self._next_check or self.should_stop or self._channel is None:
            return
        self._next_check = now + STALL_CHECK_INTERVAL
        # with every prefetch slot taken (workers busy, retries waiting) the
        # broker rightly sends nothing
        if self._in_flight() >= self.prefetch_count:
            return
        for provider, since in list(self._quiet_since.items()):
            if now - since >= STALL_AFTER:
                self._quiet_since[provider] = now
                self._check_served(provider.queue.name)

    def _check_served(self, queue):
        """Raise a connection error (the consume loop then connects and
        consumes anew) if the broker is not serving the consumer of
        ``queue`` (brokers.unserved)."""
        reason = brokers.unserved(self._channel, queue, STALL_AFTER,
                                  STALL_ANSWER_TIMEOUT)
        if reason is not None:
            self._channel = None
            raise amqp.exceptions.ConnectionForced("consumer not served: " + reason)

    def ack_message(self, message, multiple=False):
        """nameko's; ``multiple`` acks every delivery of the channel up to
        this one too."""
        self._settled(message)
        try:
            if not multiple:
                super().ack_message(message)
            elif message.channel.connection:  # else the broker has them back
                message.ack(multiple=True)
        except LOST_CONNECTION as exc:
            _log.warning("could not ack, the broker will redeliver: %r", exc)

    def requeue_message(self, message):
        self._settled(message)
        try:
            super().requeue_message(message)
        except LOST_CONNECTION as exc:
            _log.warning("could not requeue, the broker will redeliver: %r", exc)

    @contextmanager
    def establish_connection(self):
        with self.create_connection() as connection:
            while True:
                if self.should_stop:
                    raise StopWaiting()
                try:
                    brokers.connect(connection)
                    break
                except connection.recoverable_connection_errors as exc:
                    self._broker_away = True
                    self.on_connection_error(exc, RECONNECT_INTERVAL)
                    self._stop_asked.wait(RECONNECT_INTERVAL)
            self._broker_away = False
            done_waiting(self.container, RABBITMQ, self._who(),
                         brokers.redact(self.amqp_uri))
            yield connection

    def _who(self):
        return "{} consumer".format(type(self).__name__)

    def on_connection_error(self, exc, interval):
        # nameko's hides the password of the first node only
        waiting_for(self.container, RABBITMQ, self._who(),
                    brokers.redact(self.amqp_uri), exc)

    def run(self, *args, **kwargs):
        try:
            super().run(*args, **kwargs)
        except StopWaiting:
            pass  # asked to stop while the broker was away

    def _queues(self):
        queues = []
        for provider in self._providers:
            queues.append(provider.queue)
            queues.extend(getattr(provider, "also_declares", ()))
        return queues

    def get_consumers(self, consumer_cls, channel):
        # a new channel numbers its deliveries afresh; the old one's are gone
        self._channel, self._held = channel, set()
        self._quiet_since = dict.fromkeys(self._providers, time.monotonic())
        try:
            consumers = super().get_consumers(consumer_cls, channel)
        except amqp.exceptions.PreconditionFailed as exc:
            for queue in self._queues():
                found = brokers.mismatch(exc, queue.name, self._queue_type())
                if found is not None and queue.name in str(exc):
                    _log.error("%s", found)
            raise
        # kombu raises a decode error into the consume loop, which ends the
        # container; a provider that can dead-letter takes the message
        for provider, consumer in self._consumers.items():
            if hasattr(provider, "dead_letter"):
                consumer.on_decode_error = partial(self._on_decode_error, provider)
        return consumers

    def _on_decode_error(self, provider, message, exc):
        self._delivered(provider, message)
        # runs in the consume loop: publish from a thread of its own
        reason = "undecodable body: {}: {}".format(type(exc).__name__, exc)
        self.container.spawn_managed_thread(
            partial(provider.dead_letter, message, reason))

    def _queue_type(self):
        return brokers.queue_type(self.container.config)

    def check_queues(self):
        """Declare every queue of the providers once: one of another type
        raises QueueTypeMismatch. A broker that does not answer is left to
        the consume loop."""
        connection = Connection(self.amqp_uri, connect_timeout=2)
        try:
            brokers.connect(connection)
            brokers.declare(self._queues(), connection.channel(),
                            self._queue_type())
        except brokers.QueueTypeMismatch:
            raise
        except Exception as exc:
            _log.warning("could not check the queues at start: %r", exc)
        finally:
            connection.release()

    def start(self):
        """nameko's waits until the consumers consume: with the broker away,
        for as long as it is away, and the container's other extensions
        (/health among them) waited too, nor could SIGTERM stop the
        service. This one returns once the first attempt to connect has
        failed; the consume loop goes on trying."""
        if not self._starting:
            self.check_queues()
            self._starting = True
            self._gt = self.container.spawn_managed_thread(self.run)
            self._gt.link(self._handle_thread_exited)
        while not (self._consumers_ready.ready() or self._broker_away
                   or self._gt.dead):
            eventlet.sleep(START_POLL_INTERVAL)
        if self._consumers_ready.ready():
            try:
                self._consumers_ready.wait()
            except Exception as exc:  # as nameko: the container dies of it
                _log.debug("consumer failed to start %s (%s)", self, exc)

    def unregister_provider(self, provider):
        if not self._consumers_ready.ready():
            super().unregister_provider(provider)
            return
        # as nameko does, but a consumer of a lost connection needs no
        # cancel, and one the broker does not answer gets CANCEL_WAIT seconds
        removed = Event()
        self._pending_remove_providers[provider] = removed
        deadline = time.monotonic() + CANCEL_WAIT
        while not removed.ready() and not self._broker_away:
            if time.monotonic() > deadline:
                _log.warning("the broker did not answer the cancel of the "
                             "consumer of %s within %ss", provider.queue.name,
                             CANCEL_WAIT)
                self._unanswered = True
                break
            eventlet.sleep(0.1)
        if not removed.ready():
            self._pending_remove_providers.pop(provider, None)
            self._consumers.pop(provider, None)
        super(QueueConsumer, self).unregister_provider(provider)

    def stop(self):
        if self._unanswered:  # the consume loop waits for that answer
            self.kill()
            return
        if self._broker_away:
            self._stop_waiting()
        if self._gt is not None and not self._consumers_ready.ready():
            # never consumed: nothing to cancel, ack or requeue. nameko
            # killed the loop with an error, which killed the container
            self._consumers_ready.send_exception(QueueConsumerStopped())
            self._stop_waiting()
            self.kill()
            return
        super().stop()

    def _stop_waiting(self):
        """The consume loop ends at once if it waits for the broker."""
        self.should_stop = True
        if not self._stop_asked.ready():
            self._stop_asked.send()

    def kill(self):
        """nameko's, which waits for the consume loop to end for as long as
        it takes: a loop blocked on a broker that stopped answering (a
        consumer cancel whose answer never comes) kept the process alive
        after the stop deadline, SIGTERM or not. Here the loop gets
        KILL_WAIT seconds, then is killed; its socket goes with the process."""
        if self._gt is None or self._gt.dead:
            return
        self._providers = set()
        self._pending_remove_providers = {}
        self.should_stop = True
        try:
            with eventlet.Timeout(KILL_WAIT, False):
                self._gt.wait()
        except Exception as exc:  # as nameko: the container is dying anyway
            _log.warning("QueueConsumer %s raised %r during kill", self, exc)
        if not self._gt.dead:
            _log.warning("the consume loop did not end within %ss of the kill: "
                         "killed", KILL_WAIT)
            self._gt.kill()
        super(QueueConsumer, self).kill()


class DeadLetteringQueueConsumer(ResilientQueueConsumer):
    """Hands a message kombu cannot decode to its provider, instead of
    letting the decode error escape into the consume loop.

    And acks in runs: workers that end together (those of one group
    commit) ack with one ``basic_ack(multiple=True)`` for the run of
    delivery tags they complete, not a frame each. A run only ever covers
    messages whose workers are done: a message still in its worker or
    waiting for a retry stops it, and the done ones after it are acked one
    by one."""

    def __init__(self):
        super().__init__()
        self._unacked = {}  # delivery tag -> [message, done], in delivery order
        self._acking = False

    def get_consumers(self, consumer_cls, channel):
        self._unacked = {}
        consumers = super().get_consumers(consumer_cls, channel)
        for provider, consumer in self._consumers.items():
            if getattr(provider, "raw_schema", None) is not None:
                # kombu then hands over the message undecoded
                consumer.on_message = partial(self._on_raw_message, provider)
        return consumers

    def _on_raw_message(self, provider, message):
        """A body the provider's ``raw_schema`` takes as it is skips kombu's
        decoding and nameko's thread per message; any other goes the usual
        way, whose errors name its fault."""
        payload = provider.parse_raw(message)
        if payload is not None:
            self._delivered(provider, message)
            provider.handle_payload(payload, message)
            return
        try:
            body = message.decode()
        except Exception as exc:
            self._on_decode_error(provider, message, exc)
        else:
            self.handle_message(provider, body, message)

    def _delivered(self, provider, message):
        if message.channel is self._channel:
            self._unacked[message.delivery_tag] = [message, False]
            self._quiet_since[provider] = time.monotonic()

    def _settled(self, message):
        pass  # _unacked is kept by the acks below

    def _in_flight(self):
        return len(self._unacked)

    def requeue_message(self, message):
        if message.channel is self._channel:
            self._unacked.pop(message.delivery_tag, None)
        super().requeue_message(message)

    def ack_message(self, message):
        self.ack_messages([message], wait=True)

    def ack_messages(self, messages, wait=False):
        """Ack these messages, in runs with the others done by now; with
        ``wait``, after one hub turn, in which the other workers of a group
        mark theirs."""
        tracked = False
        for message in messages:
            entry = (self._unacked.get(message.delivery_tag)
                     if message.channel is self._channel else None)
            if entry is None:
                super().ack_message(message)
            else:
                entry[1] = tracked = True
        if not tracked or self._acking:  # the thread acking now takes these too
            return
        self._acking = True
        try:
            if wait:
                eventlet.sleep(0)
            self._ack_done()
        finally:
            self._acking = False

    def _ack_done(self):
        # until none is left: an ack frame may yield, and more workers end
        while True:
            run, rest, in_run = [], [], True
            for message, done in self._unacked.values():
                if not done:
                    in_run = False
                elif in_run:
                    run.append(message)
                else:
                    rest.append(message)
            if not run and not rest:
                return
            for message in run + rest:
                del self._unacked[message.delivery_tag]
            if run:
                super().ack_message(run[-1], multiple=len(run) > 1)
            for message in rest:
                super().ack_message(message)


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
        self.dead_letter_publisher = Publisher(
            config[AMQP_URI_CONFIG_KEY],
            declare=[self.dead_letter_queue.exchange, self.dead_letter_queue],
        )

    def stop(self):
        self._stopping = True
        super().stop()

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
            return result, exc_info

        self._failed(worker_ctx.args[0], message, attempt, exc_info[1])
        return result, exc_info

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
        _log.warning("dead-lettered a %s message: %s%s",
                     delivery.get("routing_key"), reason,
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
            self.queue_consumer.ack_messages(finished)
        finally:
            done.send()
        return result, exc_info


RPC_DEAD_LETTER_EXCHANGE = "rpc.dead-letter"

rpc_requests_refused = Counter(
    "rpc_requests_refused_total",
    "RPC requests refused before any worker ran, by reason (no_reply_to, "
    "no_correlation_id, undecodable): dead-lettered, or answered with an "
    "error when they can be.", ["reason"])


class JsonFallbackResponder(nameko.rpc.Responder):
    """nameko's Responder, which answers in the request's content type:
    it raised KeyError for a request with none or one kombu does not know,
    and answered a pickle request (refused as undecodable) in pickle. A
    request in a content type the service does not accept is answered in
    JSON."""

    def __init__(self, *args, accept=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.accept = accept

    def send_response(self, result, exc_info):
        properties = self.message.properties
        if registry.type_to_name.get(properties.get("content_type")) not in self.accept:
            properties["content_type"] = "application/json"
        return super().send_response(result, exc_info)


class ResilientRpcConsumer(nameko.rpc.RpcConsumer):
    """nameko's RpcConsumer on a ResilientQueueConsumer, whose reply to a
    request does not kill the container when the broker has gone: upstream
    lets the publish error escape into the worker's result handling. Its
    queue is of the type AMQP_QUEUE_TYPE names.

    And a malformed request runs no worker and never ends the container
    (upstream's Responder raised KeyError on a request without
    ``reply_to``, which killed it, and the broker then redelivered the
    request to the next process): one without ``reply_to`` or
    ``correlation_id`` cannot be answered usefully, and goes to the
    dead-letter queue ``rpc-<service>.dead-letter`` with the reason; one
    whose body cannot be decoded is answered with a MalformedRequest error
    if it can be, else dead-lettered. Each is logged and counted
    (rpc_requests_refused_total)."""

    queue_consumer = ResilientQueueConsumer()

    def setup(self):
        super().setup()
        config = self.container.config
        # the votes service's RPC queue carries votes too (its vote method)
        self.queue = brokers.typed(self.queue, config)
        name = "{}.dead-letter".format(self.queue.name)
        self.dead_letter_queue = brokers.typed(
            dead_letter_queue(RPC_DEAD_LETTER_EXCHANGE, name, name), config)
        self.also_declares = (self.dead_letter_queue,)
        self.dead_letter_publisher = Publisher(
            config[AMQP_URI_CONFIG_KEY],
            declare=[self.dead_letter_queue.exchange, self.dead_letter_queue])

    def handle_message(self, body, message):
        problem = unanswerable(message)
        if problem is not None:
            self._refuse(message, *problem)
            return
        super().handle_message(body, message)

    def dead_letter(self, message, reason):
        """The queue consumer's hook for a body it cannot decode."""
        self._refuse(message, UNDECODABLE, reason)

    def _refuse(self, message, kind, reason):
        """Answer the request with an error if it can be answered, else
        copy it to the dead-letter queue; then ack it. A copy that fails
        requeues the message, never drops it."""
        routing_key = message.delivery_info.get("routing_key")
        if unanswerable(message) is None:
            _log.warning("refused an RPC request to %s: %s", routing_key, reason)
            rpc_requests_refused.labels(kind).inc()
            self.handle_result(message, None, _failure(MalformedRequest(reason)))
            return
        try:
            copy_to_dead_letters(self.dead_letter_publisher,
                                 self.dead_letter_queue, message, reason)
        except Exception as exc:
            _log.error("could not dead-letter an RPC request (%s); requeued", exc)
            eventlet.sleep(1)
            self.queue_consumer.requeue_message(message)
            return
        rpc_requests_refused.labels(kind).inc()
        _log.warning("dead-lettered an RPC request to %s: %s", routing_key, reason)
        self.queue_consumer.ack_message(message)

    def handle_result(self, message, result, exc_info):
        # no reply while the broker is away; the request stays unacked and
        # is redelivered, or expires. Raising here killed the container.
        config = self.container.config
        responder = JsonFallbackResponder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
            accept=self.container.accept)
        try:
            result, exc_info = responder.send_response(result, exc_info)
        except (OperationalError,) + LOST_CONNECTION as exc:
            _log.warning("could not send an RPC reply: %r", exc)
            return result, exc_info
        self.queue_consumer.ack_message(message)
        return result, exc_info


NO_REPLY_TO = "no_reply_to"
NO_CORRELATION_ID = "no_correlation_id"
UNDECODABLE = "undecodable"


def unanswerable(message):
    """(kind, reason) when no reply to ``message`` could reach its caller,
    else None."""
    properties = message.properties
    reply_to = properties.get("reply_to")
    if not isinstance(reply_to, str) or not reply_to:
        return NO_REPLY_TO, "no reply_to: the request cannot be answered"
    if not properties.get("correlation_id"):
        return NO_CORRELATION_ID, ("no correlation_id: the request can be neither "
                                   "answered nor told from a redelivery")
    return None


def _failure(exc):
    try:
        raise exc
    except type(exc):
        return sys.exc_info()


REQUEST_ID_CONTEXT_KEY = "rpc_request_id"


class Rpc(nameko.rpc.Rpc):
    """nameko's ``rpc`` on a ResilientQueueConsumer, which also hands the
    worker a request id: the request's correlation id, the same on every
    delivery of one request (nameko passes it to the responder alone)."""

    rpc_consumer = ResilientRpcConsumer()

    def unpack_message_headers(self, message):
        context_data = super().unpack_message_headers(message)
        correlation_id = message.properties.get("correlation_id")
        if correlation_id:
            context_data[REQUEST_ID_CONTEXT_KEY] = hashlib.sha256(
                str(correlation_id).encode()).hexdigest()[:32]
        return context_data


class RequestId(ContextDataProvider):
    """Injects the id of the RPC request being served (None if the caller
    sent no correlation id)."""

    context_key = REQUEST_ID_CONTEXT_KEY


rpc = Rpc.decorator
