"""Live counts for the gateway: every ``counts_changed`` announcement of the
votes service, fanned out to the subscribers (the streams of GET /stream).

Each gateway process reads every announcement from a queue of its own
(exclusive, non-durable, auto-deleted: nameko's broadcast handler with
reliable_delivery=False, see contracts.counts_changed_queue), in a managed
thread, so no nameko worker is held. Best effort: while the broker is away
announcements are missed, and a page gets the truth again from the snapshot
of its next connection.

A subscriber follows some posts and/or the top N. It gets

* ``counts`` updates ``{"postId", "upvote", "downvote", "score"}`` for the
  posts it follows and for the posts in its current top N;
* a ``top`` update ``{"top": [counts, ...]}`` when the members or the order
  of its top N change.

Its mailbox holds at most one update per post (and one ``top``): a slow
subscriber skips intermediate counts and gets the latest ones, so memory
per subscriber is bounded by what it follows. Every update carries an id
that only grows within the process (it starts from the clock, so it also
grows across restarts), for the SSE ``id:`` field.
"""
import collections
import functools
import itertools
import logging
import time
import uuid

import eventlet
from eventlet.event import Event
from kombu import Queue
from nameko.extensions import DependencyProvider

from services import contracts
from services.gateway.read_cache import CountsCache
from services.gateway.schemas import MAX_STREAM_POSTS
from services.platform.amqp_layer import ConsumeLoop
from services.platform.web import sse_event
from services.settings import settings_of

_log = logging.getLogger(__name__)

MAX_POSTS = MAX_STREAM_POSTS  # posts one subscriber may follow
MAX_TOP = contracts.MAX_TOP    # the largest top N
QUEUE_MAX_LENGTH = 10000   # announcements the broker keeps for a slow process

COUNTS = "counts"
TOP = "top"

class Update(collections.namedtuple("Update", "id event data")):
    """One event for the streams; shared by every stream it goes to."""

    @functools.cached_property
    def wire(self):
        """The event as bytes, encoded once for all its streams."""
        return sse_event(self.event, self.data, self.id)

EXCHANGE = contracts.VOTES_EVENTS


def event_ids():
    """Ids that grow within the process and across restarts: microseconds
    since the epoch at start, then one more per announcement."""
    return itertools.count(time.time_ns() // 1000)


class Closed(Exception):
    """The subscription was closed (unsubscribed, or the gateway stops)."""


class Subscription:
    """One subscriber's mailbox; read it with get()."""

    def __init__(self, post_ids, top_n, top=None):
        self.post_ids = frozenset(post_ids)
        self.top_n = top_n
        # the top N this subscriber last saw, as post ids in order
        self.top_ids = tuple(c["postId"] for c in (top or ())[:top_n])
        self._top_set = frozenset(self.top_ids)
        self._pending = collections.OrderedDict()  # key -> Update
        self._ready = Event()
        self.closed = False
        self.skipped = 0   # updates replaced by a later one before being read

    def follows(self, post_id):
        return post_id in self.post_ids or post_id in self._top_set

    def _put(self, key, update):
        if self.closed:
            return
        if self._pending.pop(key, None) is not None:
            self.skipped += 1
        self._pending[key] = update  # at the end: ids stay in order
        if not self._ready.ready():
            self._ready.send()

    def _set_top(self, ids):
        self.top_ids = ids
        self._top_set = frozenset(ids)

    def _close(self):
        self.closed = True
        if not self._ready.ready():
            self._ready.send()

    def get(self, timeout=None):
        """Every update pending, oldest first, waiting up to ``timeout``
        seconds for one; [] when none came. Raises Closed once closed."""
        if not self._pending and not self.closed:
            if timeout is None or timeout > 0:
                with eventlet.Timeout(timeout, False):
                    self._ready.wait()
        if self.closed:
            raise Closed()
        updates = list(self._pending.values())
        self._pending.clear()
        self._ready = Event()
        return updates


def check_subscription(post_ids, top_n):
    post_ids = list(post_ids)
    if len(post_ids) > MAX_POSTS:
        raise ValueError("postId: at most {} posts".format(MAX_POSTS))
    if type(top_n) is not int or not 0 <= top_n <= MAX_TOP:
        raise ValueError("top: must be an integer from 0 to {}".format(MAX_TOP))
    return post_ids


class Fanout:
    """Subscribers and the announcements handed to them; no I/O."""

    def __init__(self):
        self.subscriptions = set()
        self._by_post = collections.defaultdict(set)
        self._top_followers = set()
        self._by_top_post = collections.defaultdict(set)
        self._ids = event_ids()
        self.last_id = None
        self.announcements = 0

    def next_id(self):
        self.last_id = next(self._ids)
        return self.last_id

    def subscribe(self, post_ids=(), top_n=0, top=None):
        """A new Subscription to ``post_ids`` and the top ``top_n`` posts
        (0: none); ``top`` is the top list the subscriber was shown in its
        snapshot, so that the first ``top`` update is a real change."""
        post_ids = check_subscription(post_ids, top_n)
        subscription = Subscription(post_ids, top_n, top)
        self.subscriptions.add(subscription)
        for post_id in subscription.post_ids:
            self._by_post[post_id].add(subscription)
        if top_n:
            self._top_followers.add(subscription)
            self._index_top(subscription, (), subscription.top_ids)
        return subscription

    def _index_top(self, subscription, old, new):
        for post_id in old:
            followers = self._by_top_post.get(post_id)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_top_post[post_id]
        for post_id in new:
            self._by_top_post[post_id].add(subscription)

    def unsubscribe(self, subscription):
        self.subscriptions.discard(subscription)
        self._top_followers.discard(subscription)
        self._index_top(subscription, subscription.top_ids, ())
        for post_id in subscription.post_ids:
            followers = self._by_post.get(post_id)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_post[post_id]
        subscription._close()

    def close_all(self):
        for subscription in list(self.subscriptions):
            self.unsubscribe(subscription)

    def announce(self, payload):
        """Hand one counts_changed payload to the subscribers concerned;
        returns its well-formed posts' counts."""
        posts = [counts for counts in payload.get("posts") or ()
                 if isinstance(counts, dict) and "postId" in counts]
        top = payload.get("top")
        if not posts and top is None:
            return posts
        self.announcements += 1
        event_id = self.next_id()
        if isinstance(top, list) and self._top_followers:
            self._announce_top(event_id, top)
        for counts in posts:
            post_id = counts["postId"]
            update = None
            receivers = set(self._by_post.get(post_id, ()))
            receivers.update(self._by_top_post.get(post_id, ()))
            for subscription in receivers:
                if update is None:
                    update = Update(event_id, COUNTS, counts)
                subscription._put((COUNTS, post_id), update)
        return posts

    def _announce_top(self, event_id, top):
        by_size = {}  # top N -> (post ids in order, the Update)
        for subscription in self._top_followers:
            n = subscription.top_n
            if n not in by_size:
                members = top[:n]
                by_size[n] = (tuple(c.get("postId") for c in members),
                              Update(event_id, TOP, {"top": members}))
            ids, update = by_size[n]
            if ids != subscription.top_ids:
                self._index_top(subscription, subscription.top_ids, ids)
                subscription._set_top(ids)
                subscription._put((TOP,), update)


class LiveCounts(DependencyProvider):
    """The gateway's end of the change feed (see the module docstring).

    Injects itself; the API for GET /stream:

    * ``subscribe(post_ids, top_n, top=None) -> Subscription`` (ValueError
      for more than MAX_POSTS posts or a top_n outside 0..MAX_TOP);
    * ``subscription.get(timeout) -> [Update(id, event, data), ...]``
      (``[]`` after ``timeout`` seconds without one; raises Closed when the
      gateway stops or after ``unsubscribe``);
    * ``unsubscribe(subscription)``, always, when the stream ends;
    * ``last_id``: the id of the last announcement (None before the first).
    """

    def __init__(self):
        self.fanout = Fanout()
        self.identifier = uuid.uuid4().hex
        self.loop = None
        self._thread = None

    # the subscriber API
    def subscribe(self, post_ids=(), top_n=0, top=None):
        return self.fanout.subscribe(post_ids, top_n, top)

    def unsubscribe(self, subscription):
        self.fanout.unsubscribe(subscription)

    @property
    def connected(self):
        """Consuming the announcements now."""
        return self.loop is not None and self.loop.consuming

    @property
    def last_id(self):
        return self.fanout.last_id

    def next_id(self):
        """A fresh id (for a snapshot event, say), above every earlier one."""
        return self.fanout.next_id()

    # nameko
    def setup(self):
        settings = settings_of(self.container)
        self.cache = CountsCache.from_settings(settings)
        self.amqp_uri = settings.amqp_uri
        self.broker = self.container.config  # with its TLS settings (amqp_layer)
        self.heartbeat = settings.amqp_heartbeat
        self.queue = Queue(
            contracts.counts_changed_queue(self.identifier), exchange=EXCHANGE,
            routing_key=contracts.COUNTS_CHANGED, durable=False,
            exclusive=True, auto_delete=True,
            # a process that cannot keep up loses the oldest, not memory
            queue_arguments={"x-max-length": QUEUE_MAX_LENGTH,
                             "x-overflow": "drop-head"})
        self.loop = self.feed_loop()

    def feed_loop(self):
        """The consumer of the announcements, watched for stalls
        (amqp_layer.ConsumeLoop)."""
        return ConsumeLoop(
            self.broker, self.queue, self._on_message, heartbeat=self.heartbeat,
            label="evt-votes-counts_changed--gateway.live_counts",
            what="live counts consumer", on_consuming=self._consuming)

    def start(self):
        self._thread = self.loop.start(functools.partial(
            self.container.spawn_managed_thread, identifier="live_counts"))

    def stop(self):
        if self.loop is not None:
            self.loop.stop()
        self.fanout.close_all()
        if self._thread is not None:
            self._thread.kill()
            self._thread = None

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        return self

    def _consuming(self):
        # announcements may have been missed while away
        self.cache.clear()
        _log.info("live counts: consuming %s", self.queue.name)

    def _on_message(self, body, message):
        try:
            if isinstance(body, dict):
                self.cache.announced(self.fanout.announce(body), body.get("at"))
        except Exception:
            _log.exception("could not fan out a counts_changed event")
