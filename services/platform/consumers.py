"""nameko's QueueConsumer, fixed for a broker that goes away or stops
serving, and for messages kombu cannot decode.

The consumers of the ``event_handler`` (services.platform.handlers) and of
``rpc`` (services.platform.rpc) survive the broker going away, move to
another node of a cluster, replace a consumer the broker stopped serving
(the stall watch, brokers.Quiet's rules over brokers.unserved), stop within
a bound, and check that their queues are of the type AMQP_QUEUE_TYPE
names (services.platform.brokers). See ResilientQueueConsumer.
"""
import logging
import time
from contextlib import contextmanager
from functools import partial

import amqp
import eventlet
from eventlet.event import Event
from nameko.messaging import QueueConsumer, QueueConsumerStopped

from services.platform import amqp_layer, brokers
from services.platform.brokers import (
    STALL_AFTER,
    STALL_ANSWER_TIMEOUT,
    STALL_CHECK_INTERVAL,
)
from services.platform.container import RABBITMQ, done_waiting, waiting_for

_log = logging.getLogger(__name__)

RECONNECT_INTERVAL = 1.0  # seconds between attempts to reach the broker
KILL_WAIT = 1.0  # seconds a killed consumer's loop has to end by itself
START_POLL_INTERVAL = 0.01  # seconds between two looks at a starting consumer
CANCEL_WAIT = 3.0  # seconds a stop waits for the broker to cancel a consumer
# seconds the consume loop waits for a frame before it looks at should_stop:
# kombu's 1 s made every stop and kill of the service take a second
STOP_POLL_INTERVAL = 0.05
LOST_CONNECTION = amqp.Connection.connection_errors + amqp.Connection.channel_errors


class StopWaiting(Exception):
    """The service stops while its consumer waits for the broker."""



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
        connection = amqp_layer.connection(self.container.config)
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

