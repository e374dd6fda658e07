"""A local copy of recent counts, for GET /vote-counts without a voterId.

Each gateway process keeps the counts it has read (or learned of) for at
most READ_CACHE_TTL seconds (1 s at most), in an LRU of READ_CACHE_SIZE
posts. An entry is stamped with the time its counts were true (or
earlier): the time its RPC read was sent, or the ``at`` of the
``counts_changed`` announcement that brought it, which the votes service
takes before it reads the counts. An announcement refreshes only posts
already held and never replaces newer counts. So an answer from the copy
is never older than the TTL (plus the clock difference between the votes
and gateway hosts). When the feed's connection is lost and made again the
copy is emptied, since announcements may have been missed meanwhile; any
miss reads through the votes RPC. A post read in the second half of its
entry's life (REFRESH_AT) is read again in the background (``due``), in
batches of up to REFRESH_BATCH posts a call (``refresh``), so that a post
read at least twice a TTL is always answered from the copy. ``voterId`` reads
(``myVote``) and ``/posts/top`` never use it.
"""
import collections
import logging
import math
import time

import eventlet

from services.settings import Settings

_log = logging.getLogger(__name__)

REFRESH_BATCH = 500  # posts read again in one get_counts_many call
# of the TTL: an entry this old, when read, is read again (at 0.75, a post
# read every 0.67 s missed every other read)
REFRESH_AT = 0.5


class CountsCache:
    """post id -> (counts or None, stamp); ``clock`` is wall time, as the
    announcements' ``at``."""

    def __init__(self, ttl, size, clock=time.time):
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.entries = collections.OrderedDict()
        self.refreshing = set()  # posts due or being read again in the background
        self.due_posts = []      # in the order they fell due
        self.refresher = None    # the thread running refresh(), while it runs
        self.hits = self.misses = 0

    @classmethod
    def from_settings(cls, settings):
        # READ_CACHE_SIZE: about 0.5 KB each
        return cls(settings.read_cache_ttl, settings.read_cache_size)

    @classmethod
    def from_config(cls, config):
        return cls.from_settings(Settings(config))

    @property
    def enabled(self):
        return self.ttl > 0

    def get(self, post_id):
        """(True, counts or None) from the copy, or (False, None) on a miss."""
        entry = self.entries.get(post_id)
        if entry is not None and self.clock() - entry[1] <= self.ttl:
            self.entries.move_to_end(post_id)
            self.hits += 1
            return True, entry[0]
        self.misses += 1
        return False, None

    def held(self, post_id):
        """The counts of a post held within the TTL, counted as a hit, for
        the gateway's answer without a worker (which then asks ``due``);
        None for a miss or a post with no votes (the worker answers those),
        with nothing counted."""
        entry = self.entries.get(post_id)
        if entry is None or entry[0] is None or self.clock() - entry[1] > self.ttl:
            return None
        self.entries.move_to_end(post_id)
        self.hits += 1
        return entry[0]

    def due(self, post_id):
        """Whether a held post is now due to be read again in the
        background: past REFRESH_AT of its entry's life, and not due
        already. It then waits for ``refresh``."""
        entry = self.entries.get(post_id)
        if entry is None or post_id in self.refreshing or \
                self.clock() - entry[1] <= self.ttl * REFRESH_AT:
            return False
        self.refreshing.add(post_id)
        self.due_posts.append(post_id)
        return True

    def refresh_if_due(self, post_id, read_many):
        """Start the background read (``refresh_in_background``) if a held
        post has just fallen ``due``; what a read answered from the copy
        does, with or without a worker."""
        if self.due(post_id):
            self.refresh_in_background(read_many)

    def refresh_in_background(self, read_many):
        """Run ``refresh`` in a thread of its own, unless one runs already
        (it takes what falls due meanwhile)."""
        if self.refresher is None:
            self.refresher = eventlet.spawn(self._refresh_thread, read_many)

    def _refresh_thread(self, read_many):
        try:
            self.refresh(read_many)
        except Exception as exc:
            _log.debug("background read of counts failed: %r", exc)
        finally:
            self.refresher = None
            if self.due_posts:  # fell due after the last batch was taken
                self.refresh_in_background(read_many)

    def refresh(self, read_many):
        """Read the due posts again, REFRESH_BATCH at a time, with
        ``read_many(post_ids) -> [counts or None, ...]``, until none is
        due. If a read fails, every due post is left to run out (and the
        error raised): no retry loop while the votes service is away."""
        while self.due_posts:
            batch = self.due_posts[:REFRESH_BATCH]
            del self.due_posts[:REFRESH_BATCH]
            sent = self.clock()
            try:
                found = read_many(batch)
                for post_id, counts in zip(batch, found, strict=True):
                    self.put(post_id, counts, sent)
            except Exception:
                self.refreshing.difference_update(self.due_posts)
                del self.due_posts[:]
                raise
            finally:
                self.refreshing.difference_update(batch)

    def put(self, post_id, counts, stamp):
        """Counts read through the RPC sent at ``stamp``."""
        entry = self.entries.get(post_id)
        if entry is not None and entry[1] > stamp:
            return  # an announcement newer than this read came meanwhile
        self.entries[post_id] = (counts, stamp)
        self.entries.move_to_end(post_id)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def announced(self, posts, at):
        """A counts_changed announcement: posts held get its counts, if
        they are newer than theirs. An ``at`` ahead of this clock counts
        as now (a votes host whose clock runs ahead, or a forged message,
        must not keep counts fresh for longer than the TTL)."""
        if not (type(at) in (int, float) and math.isfinite(at)):
            return
        at = min(at, self.clock())
        entries = self.entries
        for counts in posts:
            entry = entries.get(counts.get("postId"))
            if entry is not None and entry[1] <= at:
                entries[counts["postId"]] = (counts, at)

    def clear(self):
        self.entries.clear()
        self.refreshing.clear()
        del self.due_posts[:]
