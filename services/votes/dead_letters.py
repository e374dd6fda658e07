"""The votes service's dead letters: the headers its event handler gives
an event it cannot apply (failed_event_headers), and the tool that looks
at the dead-letter queue and replays it:

    python -m services.votes.dead_letters show [--config config.yml]
    python -m services.votes.dead_letters replay [--config config.yml] [--force]

``show`` prints each message's reason and body and leaves it in place.

``replay`` publishes each message back to the exchange and routing key it
first came to, persistent and ``mandatory``, with a publisher confirm, and
removes it from the dead-letter queue only once the broker has confirmed
it. A message the broker returns as unroutable, nacks, or refuses (an
exchange that no longer exists) stays in the dead-letter queue, and the
tool says why. If the broker goes away mid-way, the tool stops; what it had
not confirmed stays (a message whose confirm was lost may then exist twice:
the mark check below makes the second one harmless, within the mark's TTL).

A message may have been applied to the counts before it was dead-lettered
(its handler failed after, or part way through, applying it). Replaying it
after its exactly-once marks ``votes:{bN}:applied:<eventId>`` (one per
bucket its votes fall in) have expired (``APPLIED_MARK_TTL``) would count
it twice. So, per message:

* ``invalid payload`` or ``undecodable body``: it never reached a worker,
  was never applied, and is replayed (it is dead-lettered again if it is
  still bad);
* otherwise (``handler failed ...``) the event may have been applied:

  - the votes service looked for the marks when it dead-lettered the
    message, and if it found any kept them for good (PERSIST), and wrote the
    answer in the header ``x-applied-mark``: ``present`` is refused
    ("applied");
  - the tool looks for the marks in Redis (``REDIS_URIS.votes`` of the
    config, one server or a cluster): any found is refused ("applied");
  - ``x-applied-mark: absent`` (no mark when dead-lettered, none since) is
    replayed;
  - no header, or ``unknown`` (dead-lettered by an older version, or Redis
    did not answer then): replayed only if it was dead-lettered less than
    ``APPLIED_MARK_TTL`` ago, since a mark it had would still be there;
    older ones are refused ("status unknown");
  - Redis not answering now: refused ("status unknown").

A refused message stays in the dead-letter queue, with one line on stderr
saying why. ``--force`` replays refused messages too: one refused because
its mark was kept for good is then skipped by the votes service (harmless);
one of unknown status may be counted twice. The exit status is 1 when any
message was kept back, else 0.
"""
import argparse
import json
import logging
import sys
import time

import amqp
import redis
from nameko.constants import AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY

from services import contracts
from services.platform import amqp_layer, brokers, correlation, dead_lettering
from services.platform.amqp_layer import Link
from services.settings import Settings, read_config
from services.settings.table import TOOLS
from services.votes.store import (
    DEFAULT_MARK_TTL,
    connect,
    storage_of,
)

_log = logging.getLogger(__name__)

# -- what the votes service's event handler does with what it cannot apply --

DEAD_LETTER_QUEUE = dead_lettering.dead_letter_queue(
    contracts.DEAD_LETTER_EXCHANGE, contracts.DEAD_LETTER_QUEUE,
    contracts.DEAD_LETTER_ROUTING_KEY)
DEAD_LETTER_EXCHANGE = DEAD_LETTER_QUEUE.exchange
# headers of an event dead-lettered after its handler kept failing (read
# by replay below)
EVENT_ID_HEADER = "x-event-id"
APPLIED_MARK_HEADER = "x-applied-mark"
MARK_PRESENT = "present"  # applied (perhaps in part); the mark is kept for good
MARK_ABSENT = "absent"    # no mark: not applied, as far as Redis could tell
MARK_UNKNOWN = "unknown"  # Redis could not be asked


def seal_applied_mark(storage, event):
    """Whether the event's exactly-once marks exist (any of them: it may
    have been applied in part), each kept for good with PERSIST: an applied
    event that is dead-lettered keeps its marks, so that a replay, however
    late, applies no part twice."""
    if storage is None:
        return MARK_UNKNOWN
    try:
        found = storage.seal_marks(event.id, [vote.postId for vote in event.votes])
    except redis.RedisError as exc:
        _log.error("could not look up the marks of dead-lettered event %s: %r",
                   event.id, exc)
        return MARK_UNKNOWN
    return MARK_PRESENT if found else MARK_ABSENT


def failed_event_headers(container, event):
    """The event handler's ``failed_headers``: an event whose handler kept
    failing may have been applied, so its mark is looked up and sealed
    (seal_applied_mark) in the container's store, and the answer goes with
    it for the replay."""
    event_id = getattr(event, "id", None)
    if event_id is None:
        return {}
    return {EVENT_ID_HEADER: event_id,
            APPLIED_MARK_HEADER: seal_applied_mark(storage_of(container), event)}


# -- show and replay --

REASON = dead_lettering.REASON_HEADER
ORIGIN_EXCHANGE = dead_lettering.ORIGIN_EXCHANGE_HEADER
ORIGIN_ROUTING_KEY = dead_lettering.ORIGIN_ROUTING_KEY_HEADER
DEAD_LETTERED_AT = dead_lettering.DEAD_LETTERED_AT_HEADER
OUR_HEADERS = (REASON, ORIGIN_EXCHANGE, ORIGIN_ROUTING_KEY, DEAD_LETTERED_AT,
               EVENT_ID_HEADER, APPLIED_MARK_HEADER)
# reasons of messages that never reached a worker
NEVER_APPLIED = ("invalid payload", "undecodable body")
CONFIRM_TIMEOUT = 10  # seconds the broker has to confirm one replay
CONNECT_TIMEOUT = 5


def _take_all(channel, queue):
    """Every message in the queue, unacked (they return when the channel
    closes, unless acked)."""
    queue.bind(channel).declare()
    messages = []
    while True:
        message = channel.basic_get(queue.name, no_ack=False)
        if message is None:
            return messages
        messages.append(message)


def _text(body):
    # py-amqp decodes a body whose content_encoding it knows
    return body if isinstance(body, str) else body.decode("utf-8", "replace")


def _event_id(message):
    headers = message.headers or {}
    if headers.get(EVENT_ID_HEADER):
        return headers[EVENT_ID_HEADER]
    try:
        body = json.loads(_text(message.body))
    except ValueError:
        return None
    event_id = body.get("id") if isinstance(body, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def show(connection, out=sys.stdout, queue=DEAD_LETTER_QUEUE):
    channel = connection.channel()
    messages = _take_all(channel, queue)
    for message in messages:
        headers = message.headers or {}
        out.write(json.dumps({
            "reason": headers.get(REASON),
            "routingKey": headers.get(ORIGIN_ROUTING_KEY),
            "requestIds": correlation.ids_of(headers),
            "body": _text(message.body),
        }) + "\n")
    channel.close()  # all of them go back to the queue
    return len(messages)


def _marks(message, event_id, buckets):
    """The keys the event's exactly-once marks may have (one per bucket of
    its posts: any of them says it was applied), in bucket order
    (the mark of bucket 0 alone if its body has no votes to place)."""
    try:
        body = json.loads(_text(message.body))
        post_ids = {vote["postId"] for vote in body["votes"]}
    except (ValueError, TypeError, KeyError):
        post_ids = set()
    found = sorted({contracts.bucket_of(post_id, buckets) for post_id in post_ids
                    if isinstance(post_id, str)}) or [0]
    return [contracts.applied_key(bucket, event_id) for bucket in found]


def why_not(message, store, mark_ttl, now, buckets=contracts.DEFAULT_BUCKETS):
    """None if the message may be replayed without counting anything
    twice; otherwise why not ("applied: ..." or "status unknown: ...")."""
    headers = message.headers or {}
    reason = headers.get(REASON) or ""
    if reason.startswith(NEVER_APPLIED):
        return None
    event_id = _event_id(message)
    if event_id is None:
        return "status unknown: dead-lettered by its handler, and no event id"
    marks = _marks(message, event_id, buckets)
    mark = " ".join(marks)
    if headers.get(APPLIED_MARK_HEADER) == MARK_PRESENT:
        return ("applied: event {} had its mark when it was dead-lettered "
                "(the mark is kept for good)".format(event_id))
    if store is None:
        return "status unknown: event {}, no Redis to look up {}".format(
            event_id, mark)
    try:
        with store.pipeline(transaction=False) as pipe:
            for key in marks:
                pipe.exists(key)
            found = [key for key, exists in zip(marks, pipe.execute(), strict=True)
                     if exists]
    except redis.RedisError as exc:
        return "status unknown: event {}, Redis did not answer: {}".format(
            event_id, exc)
    if found:
        return "applied: {} exists".format(" ".join(found))
    if headers.get(APPLIED_MARK_HEADER) == MARK_ABSENT:
        return None
    at = headers.get(DEAD_LETTERED_AT)
    if type(at) is not int:
        return ("status unknown: event {}, no mark, and no time of "
                "dead-lettering".format(event_id))
    if now - at >= mark_ttl:
        return ("status unknown: event {} was dead-lettered {} s ago, not "
                "less than APPLIED_MARK_TTL ({} s), with no record of its "
                "mark: a mark it had may have expired".format(
                    event_id, int(now - at), mark_ttl))
    return None


class Republisher:
    """Publishes a dead-lettered message back on a Link of its own, with
    ``mandatory`` and a publisher confirm. The broker sends basic.return
    for an unroutable message before its basic.ack, so a return is known
    once the confirm is in."""

    def __init__(self, connection, confirm_timeout=CONFIRM_TIMEOUT):
        # the nodes the tool's connection was made to
        uri = ";".join(connection.alt) or connection.as_uri(include_password=True)
        target = {AMQP_URI_CONFIG_KEY: uri, AMQP_SSL_CONFIG_KEY: connection.ssl or None,
                  LOGIN_METHOD_CONFIG_KEY: connection.login_method}
        self.link = Link(target, confirms=True, connect_timeout=CONNECT_TIMEOUT,
                         on_return=self._on_return)
        self.confirm_timeout = confirm_timeout
        self.returned = None

    def _on_return(self, exc, exchange, routing_key, message):
        self.returned = exc

    def publish(self, message, exchange, routing_key, headers):
        """None once confirmed and routed, else why not (the message may
        then not be anywhere). A lost connection or a timeout raises."""
        self.returned = None
        try:
            with self.link.lock:
                self.link.publish(
                    message.body, exchange=exchange, routing_key=routing_key,
                    timeout=self.confirm_timeout, headers=headers,
                    content_type=message.content_type or "application/json",
                    content_encoding=message.content_encoding or "utf-8",
                    delivery_mode=2, mandatory=True)
        except amqp.exceptions.MessageNacked:
            return "nacked by the broker"
        except amqp.exceptions.ChannelError as exc:
            return "refused by the broker: {}".format(exc)
        if self.returned is not None:
            return "unroutable, returned by the broker: {}".format(self.returned)
        return None

    def close(self):
        self.link.reset()


def replay(connection, store=None, mark_ttl=DEFAULT_MARK_TTL, force=False,
           out=sys.stderr, now=None, confirm_timeout=CONFIRM_TIMEOUT,
           buckets=contracts.DEFAULT_BUCKETS, queue=DEAD_LETTER_QUEUE):
    """Replay every message that may be replayed (see the module doc).
    Returns (replayed, kept back)."""
    now = time.time() if now is None else now
    channel = connection.channel()
    publisher = Republisher(connection, confirm_timeout)
    replayed = kept = 0
    try:
        for message in _take_all(channel, queue):
            headers = dict(message.headers or {})
            refusal = why_not(message, store, mark_ttl, now, buckets)
            described = "message {} ({})".format(
                _event_id(message) or "without event id",
                (headers.get(REASON) or "no reason")[:80])
            if refusal is not None and not force:
                kept += 1
                out.write("kept {}: {}\n".format(described, refusal))
                continue
            exchange = headers.get(ORIGIN_EXCHANGE) or ""
            routing_key = headers.get(ORIGIN_ROUTING_KEY) or ""
            for name in OUR_HEADERS:
                headers.pop(name, None)
            failure = publisher.publish(message, exchange, routing_key, headers)
            if failure is not None:
                kept += 1
                out.write("kept {}: not replayed to exchange {!r} with "
                          "routing key {!r}: {}\n".format(
                              described, exchange, routing_key, failure))
                continue
            channel.basic_ack(message.delivery_tag)  # only after the confirm
            replayed += 1
            if refusal is not None:
                out.write("forced {}: {}\n".format(described, refusal))
    finally:
        publisher.close()
        channel.close()  # whatever was not acked goes back to the queue
    return replayed, kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("show", "replay"))
    parser.add_argument("--config", default="config.yml")
    parser.add_argument("--force", action="store_true",
                        help="replay messages of applied or unknown status too")
    args = parser.parse_args(argv)
    config = read_config(args.config)
    settings = Settings(config, TOOLS)
    queue = brokers.typed(DEAD_LETTER_QUEUE, config)
    with amqp_layer.connect(config, connect_timeout=CONNECT_TIMEOUT) as connection:
        if args.action == "show":
            count = show(connection, queue=queue)
            print("{} dead-lettered message(s)".format(count), file=sys.stderr)
            return 0
        mark_ttl, uri = settings.applied_mark_ttl, settings.redis_uri
        store = None
        if uri:
            try:
                store = connect(uri, socket_connect_timeout=5, socket_timeout=5)
            except redis.RedisError:  # every look-up then says it did not answer
                store = redis.Redis.from_url(uri, socket_connect_timeout=5)
        try:
            replayed, kept = replay(connection, store, mark_ttl, args.force,
                                    buckets=settings.vote_buckets, queue=queue)
        finally:
            if store is not None:
                store.close()
    print("replayed {} message(s), kept back {}".format(replayed, kept),
          file=sys.stderr)
    return 1 if kept else 0


if __name__ == "__main__":
    sys.exit(main())
