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
    """The item was not done within its deadline: it waited longer than
    ``max_wait`` before its group left (and was never sent), or its group's
    flush outlasted ``deadline`` (and its outcome is unknown)."""


class _Pending:
    __slots__ = ("item", "weight", "event", "since", "abandoned")

    def __init__(self, item, weight):
        self.item = item
        self.weight = weight
        self.event = Event()
        self.since = time.monotonic()
        self.abandoned = False

    def settle(self, result=None, exc=None):
        if self.event.ready():
            return
        if exc is not None:
            self.event.send_exception(exc)
        else:
            self.event.send(result)


class GroupCommit:
    """Many callers' items, one ``flush`` per round trip (see the module
    docstring); used by the publisher and the RPC client."""

    def __init__(self, flush, max_weight, max_wait, weigh=lambda item: 1,
                 deadline=None):
        """``flush(items)`` returns one result per item, or raises for all.
        An item still queued ``max_wait`` seconds after submission fails
        with ``Expired`` instead of joining a group. No ``submit`` waits
        longer than ``deadline`` seconds (default: no bound), whatever the
        flushers do."""
        self.flush = flush
        self.max_weight = max_weight
        self.max_wait = max_wait
        self.weigh = weigh
        self.deadline = deadline
        self.queue = LightQueue()

    def submit(self, item, timeout=None):
        """The item's result, once its group is flushed; ``timeout`` (the
        seconds its caller has left, if less than ``deadline``) bounds
        the wait too: with none left the item is not queued at all."""
        limit = self.deadline if timeout is None else (
            timeout if self.deadline is None else min(timeout, self.deadline))
        if limit is not None and limit <= 0:
            raise Expired()
        pending = _Pending(item, self.weigh(item))
        self.queue.put(pending)
        if limit is None:
            return pending.event.wait()
        try:
            with eventlet.Timeout(limit):
                return pending.event.wait()
        except eventlet.Timeout:
            pending.abandoned = True  # not sent yet: it never will be
            raise Expired() from None

    def put(self, item):
        """Queue an item for the next group without waiting for it: its
        ``flush`` sees to its outcome."""
        self.queue.put(_Pending(item, self.weigh(item)))

    def drain(self):
        """Take every item still queued (none of them will be flushed)."""
        items = []
        while True:
            try:
                pending = self.queue.get_nowait()
            except eventlet.queue.Empty:
                return items
            if not pending.abandoned:
                items.append(pending.item)

    def run(self, flush=None):
        """A flusher loop; run it in a managed thread. Several loops may
        share one GroupCommit, each with a ``flush`` of its own (its own
        connection, say), so that one group gathers while others are in
        flight. An item too heavy for the group it was taken into is
        carried by the same loop into its next group: the carry is the
        loop's own, so no other loop can drop it."""
        flush = flush or self.flush
        carry = None
        while True:
            group, carry = self._take(carry)
            self.flush_once(group, flush)

    def _take(self, carry):
        first = carry or self.queue.get()
        group, weight = [first], first.weight
        while weight < self.max_weight:
            try:
                pending = self.queue.get_nowait()
            except eventlet.queue.Empty:
                break
            if weight + pending.weight > self.max_weight:
                return group, pending
            group.append(pending)
            weight += pending.weight
        return group, None

    def flush_once(self, group, flush):
        now = time.monotonic()
        fresh = []
        for pending in group:
            if pending.abandoned:
                continue
            if now - pending.since > self.max_wait:
                pending.settle(exc=Expired())
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
                pending.settle(exc=exc)
        else:
            for pending, result in zip(fresh, results, strict=True):
                pending.settle(result)
