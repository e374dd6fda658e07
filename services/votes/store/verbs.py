"""The store's verbs over one Redis client (a plain one, a RedisCluster or
a Sentinel master): apply votes, read counts, tops and ranking pages, set
a post's creation time, and what the health report and the dead-letter
path ask of Redis."""
import collections
import logging

import orjson

from services import contracts, rankings
from services.platform import redis_nodes
from services.votes import metrics
from services.votes.exceptions import NotFound, StoreUnavailable
from services.votes.store import layout, scripts
from services.votes.store.errors import REDIS_ERRORS, store_error

_log = logging.getLogger(__name__)

Applied = collections.namedtuple("Applied", "votes replayed conflicts")
TOP_READS = 3  # reads of the top until its order and its counts agree
# votes of the events applied in one script call, at most (an event larger
# than that goes alone); and calls in flight at once, so that one group is
# packed while Redis runs another
APPLY_GROUP_VOTES = 2000
APPLY_FLUSHERS = 2


def counts_dict(post_id, upvote, downvote, my_vote=None):
    upvote, downvote = int(upvote or 0), int(downvote or 0)
    counts = {
        "postId": post_id,
        "upvote": upvote,
        "downvote": downvote,
        "score": upvote - downvote,
    }
    if my_vote is not None:
        counts["myVote"] = my_vote
    return counts


def _pairs(ranks):
    """(member, score) pairs of a ZRANGE WITHSCORES, as redis-py gives them
    (pairs) or as a script returns them (flat)."""
    if ranks and not isinstance(ranks[0], (list, tuple)):
        return zip(ranks[0::2], ranks[1::2], strict=True)
    return ranks


def _agrees(sort, score, up, down, created):
    """Whether counts read after a ranking give the score it was read at."""
    if up is None and down is None:
        return False
    up, down = int(up or 0), int(down or 0)
    # one unit of leeway: another machine's libm may round differently
    return abs(score - rankings.stored(sort, up, down, int(created or 0))) <= (
        0 if sort == rankings.TOP else 1)


def _voter_score(entry):
    return int(entry.rsplit(":", 1)[1]) if entry else 0


class VoteStorage:
    """The domain verbs over one Redis client (a plain one, a RedisCluster
    or a Sentinel master); safe to share among workers."""

    def __init__(self, client, limits):
        self.client = client
        self.limits = limits
        self.buckets = limits.buckets
        self.writes = redis_nodes.WriteRouter(
            client, limits.min_replicas, limits.wait_timeout,
            on_redirect=lambda kind: metrics.redirects.labels(kind).inc(),
            hold=limits.replica_loss == "hold",
            on_replicas=lambda node, short: metrics.reduced_durability.labels(
                node).set(1 if short else 0),
            on_unreplicated=lambda node: metrics.unreplicated_writes.labels(node).inc())
        self.group = None  # a GroupCommit of apply_many, if set

    def _claims(self, votes):
        """{keyId: the fingerprint it is claimed for}: each Idempotency-Key
        of the event is claimed (SET NX GET) in its own bucket before any
        part is applied, so that another request under the same key is a
        conflict in every bucket, not only in those the first one used."""
        firsts = {}
        for vote in votes:
            if vote.key is not None:
                firsts.setdefault(vote.key, vote.fp or "")
        if not firsts:
            return {}
        ttl = self.limits.idempotency_ttl
        commands = [redis_nodes.Command(key, ("SET", key, fp, "NX", "GET", "EX", ttl),
                                        options={"get": True})
                    for key, fp in ((contracts.claim_key(k, self.buckets), fp)
                                    for k, fp in firsts.items())]
        prior = self.writes.run(commands)
        return {key_id: fp if old is None else old
                for (key_id, fp), old in zip(firsts.items(), prior, strict=True)}

    def _command(self, parts):
        """The apply script's command for parts [(event_id, bucket, votes,
        mark_buckets), ...]: every key named once in KEYS, the votes as one
        JSON argument (far cheaper to pack than a few arguments each). A
        part's mark is in the first of ``mark_buckets`` (None: its own
        bucket), and the marks of the others are looked for too."""
        keys = []
        marks = {}  # (event id, bucket of its mark) -> the mark's index in KEYS
        once_slots = {}  # an Idempotency-Key's key -> its index in KEYS
        tops = {}   # bucket -> the index of its top key
        packed_parts = []
        # a post's voters and retracted keys only if a voter votes on it
        # (redis-py packs every key: about 2 us each)
        voted = {vote.postId for _, _, votes, _ in parts for vote in votes if vote.voterId}
        bases = {}
        for event_id, bucket, votes, mark_buckets in parts:
            mark_buckets = mark_buckets or (bucket,)
            mark = marks.get((event_id, mark_buckets[0]))
            others = []
            if mark is None:
                # the script looks for an event's marks at its first part
                # (and remembers what it found), so they go with that alone
                keys += [contracts.applied_key(b, event_id) for b in mark_buckets]
                mark = marks[event_id, mark_buckets[0]] = len(keys) - len(mark_buckets) + 1
                others = list(range(mark + 1, len(keys) + 1))
            top = tops.get(bucket)
            if top is None:
                top = tops[bucket] = len(keys) + 1
                keys += layout.ranking_keys(bucket)
            packed = []
            for vote in votes:
                base = bases.get(vote.postId)
                if base is None:
                    base = bases[vote.postId] = len(keys) + 1
                    post_keys = contracts.post_keys(bucket, vote.postId)
                    keys += post_keys if vote.postId in voted else post_keys[:1]
                slot = 0
                if vote.key is not None:
                    once_key = contracts.once_key(bucket, vote.key)
                    slot = once_slots.get(once_key)
                    if slot is None:
                        keys.append(once_key)
                        slot = once_slots[once_key] = len(keys)
                packed.append([vote.postId, vote.score, vote.voterId or "",
                               str(vote.ts), vote.voteId, slot, vote.fp or "", base,
                               -1 if vote.createdAt is None else vote.createdAt])
            packed_parts.append([mark, top, packed, others])
        limits = self.limits
        args = scripts.APPLY.evalsha(
            keys, limits.mark_ttl, orjson.dumps(packed_parts),
            limits.idempotency_ttl, int(limits.clock_skew * 1_000_000),
            limits.retraction_ttl)
        # the script's text, loaded on the first NOSCRIPT
        return redis_nodes.Command(keys[0], args, scripts.APPLY.text)

    def _part_results(self, reply, count):
        """(applied, replayed, conflicts) of each part, from the script's reply."""
        return [reply[i:i + 3] for i in range(0, 3 * count, 3)]

    def apply(self, event_id, votes):
        """Apply the votes of one event, once. Returns Applied: how many
        votes were applied, and how many keyed votes were skipped as
        replays of their key or as conflicts with it (all 0 when the event
        had been applied before).

        The event is split by bucket. On a cluster each part is applied
        with a mark of its own, so that a retry after a failure part way
        applies only the parts still missing; on one server one call
        applies every part, with one mark for the event (in the lowest
        bucket of its posts). It returns only when every part is applied
        (and, with REDIS_MIN_REPLICAS, on that many replicas); else it
        raises. With a ``group`` (the service's), concurrent workers'
        events share script calls (apply_many)."""
        if self.group is not None:
            result = self.group.submit((event_id, votes))
            if isinstance(result, Exception):
                raise result
            return result
        return self.apply_many([(event_id, votes)])[0]

    def apply_group(self, events):
        """apply_many for the group commit. If the shared call fails for
        another reason than the store being unavailable (an event the
        script cannot apply), each event is tried alone, so that its
        failure is its own and the others are applied: returns an Applied
        or the exception for each event. The marks make the retry safe. A
        call that fails has written nothing (the script works every vote
        out before its first write), so on one server, one call, each
        event's Applied is whole; on a cluster the calls of the other
        buckets may have succeeded, and an event's Applied then leaves out
        what they applied."""
        try:
            return self.apply_many(events)
        except StoreUnavailable:
            raise
        except Exception:
            if len(events) == 1:
                raise
            _log.warning("a group of %d events failed; applying each alone", len(events))
        results = []
        for event in events:
            try:
                results.append(self.apply_many([event])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def apply_many(self, events):
        """apply() for [(event_id, votes), ...] in as few script calls as
        the layout allows: one on one server, one per bucket on a cluster.
        Returns an Applied per event, or raises for all of them (a retry
        re-applies only the parts that are missing)."""
        try:
            claims = self._claims([vote for _, votes in events for vote in votes])
            conflicts = [0] * len(events)
            by_bucket = collections.defaultdict(list)  # bucket -> [(event, part)]
            for number, (event_id, votes) in enumerate(events):
                parts = collections.defaultdict(list)
                every = set()  # the buckets of all its votes, conflicts too
                for vote in votes:
                    bucket = contracts.bucket_of(vote.postId, self.buckets)
                    every.add(bucket)
                    if vote.key is not None and claims[vote.key] != (vote.fp or ""):
                        conflicts[number] += 1
                        continue
                    parts[bucket].append(vote)
                # on one server, one mark per event, from its votes alone (not
                # from which were conflicts: claims expire), and found in any
                # bucket of them: an older version wrote one per part
                mark_buckets = None if self.writes.cluster else sorted(every)
                for bucket, part in parts.items():
                    by_bucket[bucket].append((number, (event_id, bucket, part, mark_buckets)))
            if self.writes.cluster:  # a script may touch one slot only
                calls = [by_bucket[bucket] for bucket in sorted(by_bucket)]
            else:  # one server: one call (none when every vote was a conflict)
                call = [part for bucket in sorted(by_bucket) for part in by_bucket[bucket]]
                calls = [call] if call else []
            replies = self.writes.run([self._command([part for _, part in call])
                                       for call in calls])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        totals = [[0, 0, c] for c in conflicts]
        for call, reply in zip(calls, replies, strict=True):
            for (number, _), result in zip(call, self._part_results(reply, len(call)),
                                           strict=True):
                total = totals[number]
                total[0] += max(result[0], 0)
                total[1] += result[1]
                total[2] += result[2]
        return [Applied(*total) for total in totals]

    def counts_many(self, queries):
        """[(post_id, voter_id or None), ...] -> [counts or None, ...]: one
        counts script call per bucket, in one pipeline."""
        by_bucket = collections.defaultdict(list)  # bucket -> [query index]
        for index, (post_id, _) in enumerate(queries):
            by_bucket[contracts.bucket_of(post_id, self.buckets)].append(index)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for bucket, indexes in by_bucket.items():
                    keys, voters = [], []
                    for index in indexes:
                        post_id, voter_id = queries[index]
                        post_key, voters_key, _ = contracts.post_keys(bucket, post_id)
                        keys.append(post_key)
                        if voter_id is not None:
                            keys.append(voters_key)
                        voters.append(voter_id or "")
                    # (a cluster pipeline has no eval())
                    pipe.execute_command(*scripts.COUNTS.eval(keys, *voters))
                replies = pipe.execute()
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        results = [None] * len(queries)
        for indexes, reply in zip(by_bucket.values(), replies, strict=True):
            for index, k in zip(indexes, range(0, 3 * len(indexes), 3), strict=True):
                upvote, downvote, mine = reply[k:k + 3]
                if upvote is None and downvote is None:
                    continue
                post_id, voter_id = queries[index]
                results[index] = counts_dict(
                    post_id, upvote, downvote,
                    None if voter_id is None else _voter_score(mine))
        return results

    def counts(self, post_id, voter_id=None):
        (result,) = self.counts_many([(post_id, voter_id)])
        if result is None:
            raise NotFound("post {} has no votes".format(post_id))
        return result

    def ping(self):
        try:
            return bool(self.client.ping())
        except REDIS_ERRORS:
            return False

    def durability(self):
        """{"durability": ...} for the health report: "replicated" (every
        master's writes wait for REDIS_MIN_REPLICAS replicas), "reduced"
        (some masters, in "reducedNodes", have fewer in sync and ack
        without them), "held" (as reduced, REDIS_REPLICA_LOSS=hold: their
        writes wait) or "unreplicated" (no replica is waited for)."""
        wanted, short = self.writes.durability()
        if short:
            return {"durability": "held" if self.writes.hold else "reduced",
                    "reducedNodes": sorted(short)}
        return {"durability": "replicated" if wanted else "unreplicated"}

    def top(self, limit, reads=TOP_READS):
        """The top ``limit`` posts by score (see page)."""
        return self.page(rankings.TOP, limit, reads=reads)[0]

    def page(self, sort, limit, after=None, reads=TOP_READS):
        """(counts of up to ``limit`` posts, the cursor of the next page or
        None) in the ranking ``sort``: its value descending, ties by postId,
        starting right after ``after`` (stored score, postId), if given.
        Each bucket's first ``limit + 1`` after the cursor are merged, then
        the counts of the page read; if a vote came in between (a count that
        disagrees with its rank), it is read again, up to ``reads`` times."""
        try:
            for _ in range(reads):
                with self.client.pipeline(transaction=False) as pipe:
                    for bucket in range(self.buckets):
                        key = contracts.rank_key(bucket, sort)
                        if after is None:
                            pipe.zrange(key, 0, limit, withscores=True)
                        else:
                            # (a cluster pipeline has no eval())
                            pipe.execute_command(*scripts.AFTER.eval(
                                (key,), repr(after[0]), after[1], limit + 1))
                    ranked = sorted(
                        (float(score), post_id) for ranks in pipe.execute()
                        for post_id, score in _pairs(ranks))
                more = len(ranked) > limit
                ranked = ranked[:limit]
                with self.client.pipeline(transaction=False) as pipe:
                    for _, post_id in ranked:
                        pipe.hmget(layout.post_key(contracts.bucket_of(post_id, self.buckets),
                                                   post_id), *layout.POST_FIELDS)
                    found = pipe.execute()
                if sort == rankings.HOT:
                    found = self._created_of_old_posts(ranked, found)
                if all(_agrees(sort, score, up, down, created)
                       for (score, _), (up, down, created) in zip(ranked, found, strict=True)):
                    break
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        counts = [counts_dict(post_id, up, down)
                  for (_, post_id), (up, down, _) in zip(ranked, found, strict=True)]
        cursor = rankings.encode_cursor(sort, *ranked[-1]) if more else None
        return counts, cursor

    def _created_of_old_posts(self, ranked, found):
        """``found`` with the creation times of posts counted before they
        moved into each post's hash, from their bucket's creation times."""
        old = [i for i, (up, down, created) in enumerate(found)
               if created is None and not (up is None and down is None)]
        if not old:
            return found
        with self.client.pipeline(transaction=False) as pipe:
            for i in old:
                post_id = ranked[i][1]
                pipe.hget(contracts.created_key(contracts.bucket_of(post_id, self.buckets)),
                          post_id)
            times = pipe.execute()
        found = list(found)
        for i, created in zip(old, times, strict=True):
            found[i] = found[i][:2] + [created]
        return found

    def set_created_at(self, post_id, created_at):
        """Set a post's creation time and its hot rank; returns the time
        set (one ahead of the store's clock by more than MAX_CLOCK_SKEW
        becomes the store's time), or None, with nothing written, when
        the post has no votes."""
        bucket = contracts.bucket_of(post_id, self.buckets)
        keys = layout.set_created_keys(bucket, post_id)
        command = redis_nodes.Command(
            keys[0], scripts.SET_CREATED.evalsha(
                keys, post_id, created_at, int(self.limits.clock_skew * 1_000_000)),
            scripts.SET_CREATED.text)
        try:
            (stored,) = self.writes.run([command])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        return None if stored is None else int(stored)

    def seal_marks(self, event_id, post_ids):
        """Whether any part of the event has its exactly-once mark, each
        mark made to last for good (PERSIST): see
        services.votes.dead_letters.seal_applied_mark."""
        keys = layout.applied_keys(event_id, post_ids, self.buckets)
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
                pipe.persist(key)
            replies = pipe.execute()
        return any(replies[0::2])


def rebuild_command(pipe, post_id, buckets, now):
    """Queue on ``pipe`` the rebuild of a post's rankings (the rebuild
    script; by its text: a cluster pipeline has no eval())."""
    keys = layout.rebuild_keys(contracts.bucket_of(post_id, buckets), post_id)
    pipe.execute_command(*scripts.REBUILD.eval(keys, post_id, int(now)))
