"""Group commit: many concurrent callers, one round trip.

Workers ``submit`` items and wait. A flusher thread takes everything waiting
(up to ``max_weight``) and hands it to ``flush`` in one call; while that call
is in flight the next group gathers. Under light load a group is one item and
adds no delay; under heavy load groups grow and round trips stay few.
"""
import time

import eventlet
from eventlet.event import Event
from eventlet.queue import LightQueue


class Expired(Exception):
    """The item waited longer than ``max_wait`` before its group left."""


class _Pending:
    __slots__ = ("item", "weight", "event", "since")

    def __init__(self, item, weight):
        self.item = item
        self.weight = weight
        self.event = Event()
        self.since = time.monotonic()


class GroupCommit:

    def __init__(self, flush, max_weight, max_wait, weigh=lambda item: 1):
        """``flush(items)`` returns one result per item, or raises for all.
        An item still queued ``max_wait`` seconds after submission fails
        with ``Expired`` instead of joining a group."""
        self.flush = flush
        self.max_weight = max_weight
        self.max_wait = max_wait
        self.weigh = weigh
        self.queue = LightQueue()
        self._carry = None

    def submit(self, item):
        pending = _Pending(item, self.weigh(item))
        self.queue.put(pending)
        return pending.event.wait()

    def run(self, flush=None):
        """A flusher loop; run it in a managed thread. Several loops may
        share one GroupCommit, each with a ``flush`` of its own (its own
        connection, say), so that one group gathers while others are in
        flight."""
        flush = flush or self.flush
        while True:
            self.flush_once(self._take(), flush)

    def _take(self):
        first = self._carry or self.queue.get()
        self._carry = None
        group, weight = [first], first.weight
        while weight < self.max_weight:
            try:
                pending = self.queue.get_nowait()
            except eventlet.queue.Empty:
                break
            if weight + pending.weight > self.max_weight:
                self._carry = pending
                break
            group.append(pending)
            weight += pending.weight
        return group

    def flush_once(self, group, flush):
        now = time.monotonic()
        fresh = []
        for pending in group:
            if now - pending.since > self.max_wait:
                pending.event.send_exception(Expired())
            else:
                fresh.append(pending)
        if not fresh:
            return
        try:
            results = flush([pending.item for pending in fresh])
            if len(results) != len(fresh):
                raise RuntimeError("{} results for {} items".format(
                    len(results), len(fresh)))
        except Exception as exc:
            for pending in fresh:
                pending.event.send_exception(exc)
        else:
            for pending, result in zip(fresh, results, strict=False):
                pending.event.send(result)
