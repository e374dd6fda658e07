"""The project's one AMQP layer: every connection its own code opens, one
publishing link, and one consume loop for the consumers that are not
nameko's.

* ``connection()`` / ``connect()``: the one place a connection is made,
  with nameko's own TLS and login settings (``AMQP_SSL``,
  ``LOGIN_METHOD``: the ones its consumers and RPC replies read, so that
  every connection of a process shares them), connected to the first node
  of ``AMQP_URI`` that answers (brokers.connect);
* ``Link``: one held connection and its producer, made on demand, with
  publisher confirms if asked, its entities declared on every connect; a
  publish fails at once (no kombu retry policy) within a deadline and the
  next use reconnects. Used by the gateway's votes
  (services.platform.publisher), its RPC requests
  (services.platform.rpc_client), the counts feed (services.votes.feed)
  and the dead-letter replay (services.votes.dead_letters);
* ``ConsumeLoop``: consume one queue without acks, reconnecting, with the
  stall watch (brokers.Quiet, brokers.unserved). Used by the RPC reply
  listener and the gateway's live counts.

nameko's own consumers (services.platform.consumers) keep nameko's
QueueConsumer loop, with the same stall-watch helpers.
"""
import logging
import socket
import time
from collections.abc import Mapping

import eventlet
from eventlet.semaphore import Semaphore
from kombu import Connection, Consumer, Producer
from nameko.constants import AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY

from services.platform import brokers
from services.platform.container import RABBITMQ, done_waiting, waiting_for

_log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
RECONNECT_PAUSE = 0.5  # after a failed connect, a link fails fast for this long
CONSUME_RETRY = 1.0    # seconds between two attempts of a consume loop
DRAIN_TIMEOUT = 1.0    # seconds between its looks at the heartbeat and at stop
SETUP_TIMEOUT = 5.0    # connect, declare and consume of a consume loop, at most


def uri_of(config_or_uri):
    """``AMQP_URI`` of a service config, or the URI itself."""
    if isinstance(config_or_uri, Mapping):
        return config_or_uri[AMQP_URI_CONFIG_KEY]
    return config_or_uri


def tls_of(config_or_uri):
    """(ssl, login_method) of a service config: ``AMQP_SSL`` as nameko
    takes it (None, true, or a dict of ssl options: ca_certs, certfile,
    keyfile, cert_reqs, server_hostname) and ``LOGIN_METHOD``; a bare URI
    has neither (``amqps://`` alone is TLS with the system's CAs)."""
    if isinstance(config_or_uri, Mapping):
        return (config_or_uri.get(AMQP_SSL_CONFIG_KEY) or None,
                config_or_uri.get(LOGIN_METHOD_CONFIG_KEY))
    return None, None


def connection(config_or_uri, *, connect_timeout=CONNECT_TIMEOUT, heartbeat=0,
               confirms=False):
    """A kombu connection (not yet connected) to the nodes of
    ``config_or_uri``, with its TLS settings (tls_of); with ``confirms``,
    its channels are in confirm mode and a publish waits for the broker's
    ack."""
    options = {"transport_options": {"confirm_publish": True}} if confirms else {}
    ssl, login_method = tls_of(config_or_uri)
    if ssl is not None:
        # kombu fills in a None server_hostname per node; a copy keeps
        # the config as nameko's own connections read it
        options["ssl"] = dict(ssl) if isinstance(ssl, Mapping) else ssl
    if login_method is not None:
        options["login_method"] = login_method
    return Connection(uri_of(config_or_uri), connect_timeout=connect_timeout,
                      heartbeat=heartbeat, **options)


def connect(config_or_uri, **options):
    """``connection()``, connected to the first node that answers; raises
    the last node's error if none does."""
    return brokers.connect(connection(config_or_uri, **options))


def close_quietly(conn):
    if conn is not None:
        try:
            conn.close()
        except Exception:  # already broken: nothing to release
            pass


class Link:
    """One AMQP connection and its producer, made on demand; hold ``lock``
    to use it, since frames of two threads must not interleave on one
    socket. kombu's own ``Connection`` would reconnect inside a publish
    with its retry policy, past any deadline; this one fails at once and
    reconnects on next use. ``declare`` (kombu entities) is declared on
    every connect; ``queue_type`` (the configured one) is named in the
    QueueTypeMismatch raised if a queue of it exists as another type.
    After a failed connect no other is tried for ``reconnect_pause``
    seconds; with ``pause_after_failure``, after a failed publish too.
    ``on_return(exc, exchange, routing_key, message)`` hears the broker
    return a mandatory message it could not route."""

    def __init__(self, config_or_uri, declare=(), confirms=False, queue_type=None,
                 connect_timeout=CONNECT_TIMEOUT, reconnect_pause=RECONNECT_PAUSE,
                 pause_after_failure=False, on_return=None):
        self.lock = Semaphore()
        self.target = config_or_uri  # what connection() is given
        self.declare = declare
        self.confirms = confirms
        self.queue_type = queue_type
        self.connect_timeout = connect_timeout
        self.reconnect_pause = reconnect_pause
        self.pause_after_failure = pause_after_failure
        self.on_return = on_return
        self.connection = None
        self.producer = None
        self._failed_at = 0.0

    def get_producer(self):
        """The producer, connecting first if needed; raises on failure."""
        if self.producer is not None:
            return self.producer
        if time.monotonic() - self._failed_at < self.reconnect_pause:
            raise ConnectionError("broker unreachable a moment ago")
        # no heartbeat: nothing reads this connection between publishes;
        # a dead one fails the next publish, which reconnects once
        conn = connection(self.target, connect_timeout=self.connect_timeout,
                          confirms=self.confirms)
        try:
            brokers.connect(conn)
            channel = conn.channel()
            brokers.declare(self.declare, channel, self.queue_type)
        except BaseException:
            self._failed_at = time.monotonic()
            close_quietly(conn)
            raise
        self.connection = conn
        self.producer = Producer(channel, on_return=self.on_return)
        return self.producer

    def publish(self, body, exchange, routing_key, timeout, delivery_mode=None,
                mandatory=False, **options):
        """Publish ``body`` (JSON unless ``content_type`` says it is
        already encoded; ``delivery_mode`` and ``mandatory`` as kombu has
        them) within ``timeout`` seconds, connecting first if needed; with
        confirms, returns once the broker has it. The caller holds
        ``lock``. Any failure closes the connection and is raised."""
        try:
            with eventlet.Timeout(timeout):
                self.get_producer().publish(
                    body, exchange=exchange, routing_key=routing_key,
                    serializer="json", delivery_mode=delivery_mode,
                    mandatory=mandatory, retry=False,
                    confirm_timeout=timeout if self.confirms else None, **options)
        except BaseException:
            # a publish refused during the pause (no producer) must not
            # extend it, or a steady flow of publishes never reconnects
            self.reset(failed=self.pause_after_failure and self.producer is not None)
            raise

    def reset(self, failed=False):
        """Close the connection; the next use reconnects (after
        ``reconnect_pause`` if ``failed``)."""
        if failed:
            self._failed_at = time.monotonic()
        close_quietly(self.connection)
        self.connection = self.producer = None


class ConsumeLoop:
    """Consumes ``queue`` (JSON, no acks) on connections of its own, from
    ``run()`` until ``stop()``, connecting again CONSUME_RETRY seconds
    after any loss. Each body goes to ``on_message(body, message)``.

    The stall watch: while ``watch()`` is true, STALL_AFTER seconds
    without a delivery make it ask the broker whether it still serves the
    consumer (brokers.unserved, counted as ``label``); if not, it raises
    ``ConnectionError("<what> not served: ...")`` and consumes anew.
    ``on_consuming()`` runs on each (re)start of consuming; with
    ``container`` and ``who``, the wait for the broker is reported to
    /health (container.waiting_for) instead of logged."""

    def __init__(self, config_or_uri, queue, on_message, *, heartbeat, label, what,
                 watch=lambda: True, on_consuming=None, container=None, who=None):
        self.target = config_or_uri  # what connection() is given
        self.amqp_uri = uri_of(config_or_uri)
        self.queue = queue
        self.on_message = on_message
        self.heartbeat = heartbeat
        self.label = label
        self.what = what
        self.watch = watch
        self.on_consuming = on_consuming
        self.container = container
        self.who = who
        self.quiet = brokers.Quiet()  # since the last delivery
        self.running = False
        self.consuming = False

    def start(self, spawn):
        """Run the loop in a thread from ``spawn`` (a container's
        spawn_managed_thread, say); returns that thread."""
        self.running = True
        return spawn(self.run)

    def stop(self):
        self.running = False

    def _delivered(self, body, message):
        self.quiet.heard()
        self.on_message(body, message)

    def _connect(self, conn):
        if self.container is None:
            brokers.connect(conn)
            return
        where = brokers.redact(self.amqp_uri)
        try:
            brokers.connect(conn)
        except conn.recoverable_connection_errors as exc:
            waiting_for(self.container, RABBITMQ, self.who, where, exc)
            raise
        done_waiting(self.container, RABBITMQ, self.who, where)

    def run(self):
        while self.running:
            conn = connection(self.target, heartbeat=self.heartbeat)
            try:
                # a broker that has just lost a node can leave a declare or
                # a consume unanswered for long: bound them, then try anew
                with eventlet.Timeout(SETUP_TIMEOUT, ConnectionError(
                        "no consumer set up within {:g}s".format(SETUP_TIMEOUT))):
                    self._connect(conn)
                    channel = conn.channel()
                    consumer = Consumer(channel, queues=[self.queue],
                                        callbacks=[self._delivered],
                                        accept=["json"], no_ack=True)
                    consumer.consume()
                with consumer:  # consume() again is a no-op; cancels on exit
                    self.consuming = True
                    self.quiet = brokers.Quiet()
                    if self.on_consuming is not None:
                        self.on_consuming()
                    while self.running:
                        try:
                            conn.drain_events(timeout=DRAIN_TIMEOUT)
                        except socket.timeout:
                            pass
                        conn.heartbeat_check()
                        self.check_served(channel)
            except Exception as exc:
                if self.consuming:
                    _log.warning("%s: lost the broker (%r), consuming anew",
                                 self.label, exc)
                elif self.container is None and self.running:
                    _log.warning("%s: broker not reachable (%r), retrying",
                                 self.label, exc)
                if self.running:
                    eventlet.sleep(CONSUME_RETRY)
            finally:
                self.consuming = False
                close_quietly(conn)

    def check_served(self, channel):
        """While watched, after STALL_AFTER seconds without a delivery:
        raise if the broker is not serving this consumer, so that it
        consumes anew."""
        if not self.watch() or not self.quiet.due():
            return
        reason = brokers.unserved(channel, self.queue.name, brokers.STALL_AFTER,
                                  brokers.STALL_ANSWER_TIMEOUT, label=self.label)
        if reason is not None:
            raise ConnectionError("{} not served: {}".format(self.what, reason))
