"""Move vote data from the layout before buckets to the bucketed one.

    python -m services.votes.migrate [--config config.yml] [--from URI] [--again]
    python -m services.votes.migrate [--config config.yml] --rankings

The old layout (``votes:post:<postId>``, ``votes:voters:<postId>``,
``votes:retracted:<postId>``, ``votes:top``, ``votes:applied:<eventId>``,
``votes:once:<keyId>``) is read with SCAN from ``--from`` (by default the
config's ``REDIS_URIS.votes``) and written in the layout of
services/contracts.py to ``REDIS_URIS.votes``, with the config's
``VOTE_BUCKETS``; that may be one Redis or any node of a Redis Cluster.

Run it while no votes service runs on either database (stop the gateway,
let the votes queue drain, stop the votes service): it copies counts by
overwriting them, so votes applied meanwhile to the new keys would be lost.

* Each key is copied (its TTL too), then, when source and target are the
  same database, deleted. Counts go to the post's bucket and its
  rankings (created at the time of the move, for hot); an event's
  exactly-once mark, whose buckets are not known any more, is set in
  every bucket; an Idempotency-Key's mark becomes its
  claim and a mark in every bucket, so no retry of an old request counts.
* Idempotent: copying a key again writes the same values.
* Resumable: the SCAN cursor of each step is kept in ``votes:migrated`` on
  the target after each batch; a second run goes on from there, and one
  after the end does nothing (``--again`` starts over).
* Progress goes to stdout, a line per batch.

``--rankings`` does only this: every post's rankings (best, controversial,
hot) rebuilt from its counts, once, for data written before rankings, and
each post's creation time moved into its hash from its bucket's
``votes:{bN}:created``, where 1.0.0 kept it. It can run while the
services run.
"""
import argparse
import sys
import time

import redis

from services import contracts
from services.platform import redis_nodes
from services.settings import Settings, read_config
from services.settings.table import TOOLS
from services.votes.store import connect, rebuild_command

BATCH = 500  # keys per SCAN and per write pipeline
DONE = "done"


class Migration:

    def __init__(self, source, target, buckets, same, out=sys.stdout):
        self.source = source
        self.target = target
        self.buckets = buckets
        self.same = same  # source and target are one database: delete what moved
        self.out = out
        self.moved = 0

    # each step: (name, pattern, copy(keys, pipe) for a batch of source keys)
    def steps(self):
        return (
            ("retracted", contracts.LEGACY_RETRACTED, self._retracted),
            ("voters", contracts.LEGACY_VOTERS, self._voters),
            ("posts", contracts.LEGACY_POST, self._posts),
            ("applied", contracts.LEGACY_APPLIED, self._applied),
            ("once", contracts.LEGACY_ONCE, self._once),
        )

    def run(self, again=False):
        if again:
            self.target.delete(contracts.MIGRATED_KEY)
        for name, prefix, copy in self.steps():
            cursor = self.target.hget(contracts.MIGRATED_KEY, name)
            if cursor == DONE:
                self.out.write("{}: done before\n".format(name))
                continue
            cursor, count = int(cursor or 0), 0
            while True:
                cursor, keys = self.source.scan(cursor, match=prefix + "*", count=BATCH)
                if keys:
                    copy(keys)
                    if self.same:
                        self.source.delete(*keys)
                    count += len(keys)
                self.target.hset(contracts.MIGRATED_KEY, name, cursor or DONE)
                if keys or not cursor:
                    self.out.write("{}: {} keys moved, cursor {}\n".format(
                        name, count, cursor or DONE))
                    self.out.flush()
                if not cursor:
                    break
            self.moved += count
        if self.same:
            self.source.delete(contracts.LEGACY_TOP)  # rebuilt from the counts
        self.out.write("migrated: {} keys moved to {} buckets\n".format(
            self.moved, self.buckets))
        return self.moved

    def _ttls(self, keys):
        with self.source.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            return pipe.execute()

    def _hashes(self, keys, new_key):
        """Copy hashes (HSCAN, so a large one is read in parts) and TTLs."""
        for key, ttl in zip(keys, self._ttls(keys), strict=True):
            target = new_key(key)
            for fields in _chunks(self.source.hscan_iter(key, count=BATCH)):
                self.target.hset(target, mapping=dict(fields))
            if ttl > 0:
                self.target.pexpire(target, ttl)

    def _retracted(self, keys):
        self._hashes(keys, lambda key: contracts.retracted_key(
            key[len(contracts.LEGACY_RETRACTED):], self.buckets))

    def _voters(self, keys):
        self._hashes(keys, lambda key: contracts.voters_key(
            key[len(contracts.LEGACY_VOTERS):], self.buckets))

    def _posts(self, keys):
        with self.source.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "upvote", "downvote")
            counts = pipe.execute()
        with self.target.pipeline(transaction=False) as pipe:
            for key, (up, down) in zip(keys, counts, strict=True):
                if up is None and down is None:
                    continue  # gone since the SCAN
                post_id = key[len(contracts.LEGACY_POST):]
                up, down = int(up or 0), int(down or 0)
                pipe.hset(contracts.post_key(post_id, self.buckets),
                          mapping={"upvote": up, "downvote": down})
                # created now, as far as hot can tell: no older time is known
                rebuild_command(pipe, post_id, self.buckets, time.time())
            pipe.execute()

    def _marks(self, keys, prefix, values, new_keys):
        """Copy string marks to every key ``new_keys(id)`` names, TTL kept."""
        with self.target.pipeline(transaction=False) as pipe:
            for key, ttl, value in zip(keys, self._ttls(keys), values, strict=True):
                if ttl == -2 or value is None:
                    continue  # expired since the SCAN
                for new_key in new_keys(key[len(prefix):]):
                    pipe.set(new_key, value, px=ttl if ttl > 0 else None)
            pipe.execute()

    def _applied(self, keys):
        self._marks(keys, contracts.LEGACY_APPLIED, ["1"] * len(keys),
                    lambda event_id: [contracts.applied_key(bucket, event_id)
                                      for bucket in range(self.buckets)])

    def _once(self, keys):
        self._marks(keys, contracts.LEGACY_ONCE, self.source.mget(keys),
                    lambda key_id: [contracts.claim_key(key_id, self.buckets)] + [
                        contracts.once_key(bucket, key_id)
                        for bucket in range(self.buckets)])


def _chunks(items, size=BATCH):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def rebuild_rankings(target, buckets, out=sys.stdout):
    """Every post's rankings rebuilt from its counts (REBUILD_SCRIPT), for
    data written before rankings existed; a post without a creation time
    in its hash gets the one its bucket's creation times hold (1.0.0), else
    the time of this run. Idempotent, and safe while votes arrive: each
    post is rebuilt in one atomic step from the counts it has then."""
    count = 0
    for _, node in redis_nodes.node_clients(target):
        for keys in _chunks(node.scan_iter(match=contracts.POST_KEY_PATTERN, count=BATCH)):
            with target.pipeline(transaction=False) as pipe:
                for key in keys:
                    rebuild_command(pipe, contracts.post_id_of(key), buckets, time.time())
                pipe.execute()
            count += len(keys)
            out.write("rankings: {} posts rebuilt\n".format(count))
            out.flush()
    out.write("rankings: done, {} posts\n".format(count))
    return count


def main(argv=None, out=sys.stdout):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yml")
    parser.add_argument("--from", dest="source",
                        help="the Redis holding the old layout (default: the target)")
    parser.add_argument("--again", action="store_true",
                        help="scan from the start, whatever an earlier run did")
    parser.add_argument("--rankings", action="store_true",
                        help="only rebuild every post's rankings from its counts "
                        "(once, after upgrading data written before rankings)")
    args = parser.parse_args(argv)
    settings = Settings(read_config(args.config), TOOLS)
    uri = settings.redis_uri
    options = dict(socket_connect_timeout=5, socket_timeout=30)
    target = connect(uri, **options)
    if args.rankings:
        try:
            rebuild_rankings(target, settings.vote_buckets, out)
        finally:
            target.close()
        return 0
    source_uri = args.source or uri
    source = redis.Redis.from_url(source_uri, decode_responses=True, **options)
    try:
        Migration(source, target, settings.vote_buckets,
                  same=source_uri == uri, out=out).run(again=args.again)
    finally:
        source.close()
        target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
