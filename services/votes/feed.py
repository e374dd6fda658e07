"""The change feed: after votes are applied, the new absolute counts of the
posts they changed go out as a ``counts_changed`` event.

Announcements are coalesced: the handler only notes which posts changed;
a managed thread flushes every FLUSH_INTERVAL seconds, reads the counts of
all of them in one Redis pipeline, and publishes one event. So a post is
announced at most once per interval per process, however hot it is.

Best effort throughout: the event is neither persistent nor mandatory, a
failed read or publish is logged and dropped (a gateway re-reads the truth
when a page reconnects), and nothing here ever blocks or fails the handler.

Payload::

    {"posts": [{"postId", "upvote", "downvote", "score"}, ...],
     "top": [{"postId", "upvote", "downvote", "score"}, ...],
     "at": <seconds since the epoch, taken before the counts were read>}

``top`` is the leaderboard (TOP_SIZE posts) read in the same flush; it is
left out when it could not be read.
"""
import logging
import time

import eventlet
from nameko.extensions import DependencyProvider

from services import contracts
from services.platform.amqp_layer import Link
from services.settings import settings_of
from services.votes.store import storage_of

_log = logging.getLogger(__name__)

TOP_SIZE = contracts.MAX_TOP  # the largest top=N a page may follow
PUBLISH_TIMEOUT = 2.0    # seconds a publish may take before it is dropped
RECONNECT_PAUSE = 1.0    # after a failed publish, none tried for this long

EXCHANGE = contracts.VOTES_EVENTS  # nameko's events exchange of the votes service


class Coalescer:
    """Changed post ids, collected and flushed as one announcement.

    ``read_counts(post_ids)`` returns a list of counts dicts (or None for a
    post with no counts); ``read_top()`` the leaderboard, a list of counts;
    ``publish(payload)`` sends it. Any of them may raise: the flush is then
    logged and dropped."""

    def __init__(self, read_counts, read_top, publish, clock=time.time):
        self.clock = clock
        self.read_counts = read_counts
        self.read_top = read_top
        self.publish = publish
        self.pending = set()
        self.published = 0
        self.dropped = 0

    def changed(self, post_ids):
        """Note that these posts changed; cheap, never raises."""
        self.pending.update(post_ids)

    def flush(self):
        """Announce the posts changed since the last flush, if any. Returns
        the payload published, or None."""
        if not self.pending:
            return None
        post_ids, self.pending = sorted(self.pending), set()
        try:
            at = self.clock()  # the counts are at least this recent
            posts = [counts for counts in self.read_counts(post_ids)
                     if counts is not None]
            payload = {"posts": posts, "at": at}
            try:
                payload["top"] = self.read_top()
            except Exception as exc:
                _log.warning("counts_changed without the top: %r", exc)
            self.publish(payload)
        except Exception as exc:
            self.dropped += 1
            _log.warning("counts_changed of %d posts dropped: %r",
                         len(post_ids), exc)
            return None
        self.published += 1
        return payload


def announcer(config):
    """A Link for the announcements, and ``publish(payload)`` on it: not
    persistent, not mandatory, no confirm, within PUBLISH_TIMEOUT seconds;
    a publish that fails drops the connection, and no new one is tried for
    RECONNECT_PAUSE seconds."""
    link = Link(config, declare=(EXCHANGE,), connect_timeout=PUBLISH_TIMEOUT,
                reconnect_pause=RECONNECT_PAUSE, pause_after_failure=True)

    def publish(payload):
        with link.lock:
            link.publish(payload, exchange=EXCHANGE,
                         routing_key=contracts.COUNTS_CHANGED,
                         timeout=PUBLISH_TIMEOUT, delivery_mode=1, mandatory=False)
    return link, publish


class CountsFeed(DependencyProvider):
    """Injects ``changed(post_ids)``: note posts whose counts changed; they
    are announced within COUNTS_FLUSH_INTERVAL seconds as one
    ``counts_changed`` event (see the module docstring)."""

    def __init__(self, read_counts=None, read_top=None, publish=None):
        # the three may be given (tests); by default the container's
        # VoteStore (storage_of) and RabbitMQ
        self._read_counts = read_counts
        self._read_top = read_top
        self._publish = publish
        self.coalescer = None
        self.link = None
        self._thread = None
        self._running = False

    def setup(self):
        self.interval = settings_of(self.container).counts_flush_interval
        publish = self._publish
        if publish is None:
            self.link, publish = announcer(self.container.config)
        self.coalescer = Coalescer(self._read_counts or self.read_counts,
                                   self._read_top or self.read_top, publish)

    def read_counts(self, post_ids):
        return storage_of(self.container).counts_many(
            [(post_id, None) for post_id in post_ids])

    def read_top(self):
        # read once: under load its order and counts rarely agree in three
        # reads either, and the next flush reads it again
        return storage_of(self.container).top(TOP_SIZE, reads=1)

    def start(self):
        self._running = True
        self._thread = self.container.spawn_managed_thread(
            self._run, identifier="counts_feed")

    def _run(self):
        while self._running:
            eventlet.sleep(self.interval)
            self.coalescer.flush()

    def _halt(self):
        self._running = False
        if self._thread is not None:
            self._thread.kill()
            self._thread = None

    def stop(self):
        # what is still pending goes out now, if it can, within the bound
        self._halt()
        try:
            with eventlet.Timeout(PUBLISH_TIMEOUT, False):
                self.coalescer.flush()
        finally:
            if self.link is not None:
                self.link.reset()

    def kill(self):
        self._halt()
        if self.link is not None:
            self.link.reset()

    def get_dependency(self, worker_ctx):
        return self.coalescer.changed
