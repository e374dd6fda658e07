"""Memory: Redis bytes per post, per voter vote and per Idempotency-Key
(MEMORY STATS deltas, see Footprint), and the peak RSS of each service."""
from bench import client
from bench.context import fmt
from services import contracts, rankings


def run(bench):
    store = bench.env.redis()
    host, port = bench.host_port("gateway")
    try:
        n = bench.p["memory_posts"]
        posts = ["m-{}".format(i) for i in range(n)]
        before = Footprint(store)
        bodies = [client.batch_body([{"postId": post, "score": 1}
                                     for post in posts[i:i + 1000]])
                  for i in range(0, n, 1000)]
        accepted, failures, _ = client.post_batches(host, port, bodies, 4)
        bench.accepted["memory posts"] = accepted
        bench.settle("memory posts", posts, accepted)
        per_post = Footprint(store).since(before) / n
        bench.figures["post_bytes"] = per_post
        bench.row("Redis memory per post", "{} B".format(fmt(per_post)), "",
                  "{} new posts via POST /votes x1000; MEMORY STATS "
                  "delta, hash tables by key".format(fmt(n)),
                  "post hash (counts, createdAt) + a member in each of the bucket's "
                  "4 rankings + its share of exactly-once marks")
        where = post_breakdown(store, posts)
        bench.figures["post_parts"] = where
        bench.row("  of which the post's hash", "{} B".format(fmt(where["hash"])), "",
                  "MEMORY USAGE of {} post keys (key, object, table entry)".format(
                      fmt(where["sampled"])))
        bench.row("  of which its rankings", "{} B".format(fmt(sum(where["ranks"].values()))),
                  "", "MEMORY USAGE SAMPLES 0 of a bucket's sorted sets / members",
                  "{}; {}: over zset-max-listpack-entries ({}) members a bucket "
                  "(~16 B a member at or below it)".format(
                      ", ".join("{} {} B".format(sort, fmt(value))
                                for sort, value in where["ranks"].items()),
                      where["encoding"], where["listpack_limit"]))

        m = bench.p["memory_voter_votes"]
        targets = posts[:bench.p["memory_voter_posts"]]
        votes = [{"postId": targets[k % len(targets)], "score": 1,
                  "voterId": "u{}".format(k)} for k in range(m)]
        before = Footprint(store)
        bodies = [client.batch_body(votes[i:i + 1000]) for i in range(0, m, 1000)]
        accepted, failures2, _ = client.post_batches(host, port, bodies, 4)
        bench.accepted["memory voters"] = accepted
        bench.settle("memory voters", posts, bench.accepted["memory posts"] + accepted)
        per_vote = Footprint(store).since(before) / m
        bench.figures["voter_vote_bytes"] = per_vote
        bench.row("Redis memory per voter vote", "{} B".format(fmt(per_vote)), "",
                  "{} votes with voterId via POST /votes x1000; MEMORY "
                  "STATS delta, hash tables by key".format(fmt(m)),
                  "{} existing posts, {} distinct voters each; voters hash "
                  "encoding {}, bucket leaderboard {}".format(
                     len(targets), fmt(m // len(targets)),
                     store.execute_command("OBJECT", "ENCODING",
                                           contracts.voters_key(targets[0])),
                     store.execute_command("OBJECT", "ENCODING", contracts.top_key(
                         contracts.bucket_of(targets[0])))))
        # the same 1-vote requests without and with a key: the
        # difference is what the keys' marks cost
        k = bench.p["memory_keys"]
        body = client.batch_body([{"postId": targets[0], "score": 1}])
        deltas = []
        for keys in (None, ["bench-key-{}".format(i) for i in range(k)]):
            before = Footprint(store)
            accepted, failed, _ = client.post_batches(
                host, port, [body] * k, 16, keys=keys)
            bench.accepted["memory keys"] = (
                bench.accepted.get("memory keys", 0) + accepted)
            bench.settle("memory keys", posts, bench.accepted["memory posts"]
                         + bench.accepted["memory voters"]
                         + bench.accepted["memory keys"])
            deltas.append(Footprint(store).since(before))
            if failed:
                bench.notes.append("memory keys: failed requests {}".format(failed))
        bench.figures["key_bytes"] = (deltas[1] - deltas[0]) / k
        bench.row("Redis memory per Idempotency-Key", "{} B".format(
                     fmt(bench.figures["key_bytes"])), "",
                  "{} 1-vote POST /votes with a key each, less the same "
                  "without; MEMORY STATS delta, hash tables by key".format(fmt(k)),
                  "{} and {} (one per bucket the request used), each with "
                  "its fingerprint, kept for IDEMPOTENCY_TTL".format(
                     contracts.claim_key("<keyId>"), contracts.once_key("N", "<keyId>")))
        for failed in (failures, failures2):
            if failed:
                bench.notes.append("memory: failed requests {}".format(failed))

        marks, mark_bytes, cursor = 0, None, 0
        while True:
            cursor, keys = store.scan(cursor, match=contracts.APPLIED_KEY_PATTERN, count=1000)
            marks += len(keys)
            if keys and mark_bytes is None:
                mark_bytes = store.memory_usage(keys[0])
            if not cursor:
                break
        bench.figures["marks"] = (marks, mark_bytes)
        info = store.info("memory")
        bench.notes.append(
            "Redis at the end: used_memory {} MB, {} exactly-once marks "
            "({}, ~{} B each by MEMORY USAGE, kept for "
            "APPLIED_MARK_TTL)".format(
                fmt(int(info["used_memory"]) / 1e6, 1), fmt(marks),
                contracts.APPLIED_KEY_PATTERN, mark_bytes))
    finally:
        store.close()


def post_breakdown(store, posts, sampled=200):
    """Where a post's bytes go: its hash (mean MEMORY USAGE of ``sampled``
    of them) and, per ranking, the bytes of a member of the first post's
    bucket (the sorted set's MEMORY USAGE over its members)."""
    with store.pipeline(transaction=False) as pipe:
        for post in posts[:sampled]:
            pipe.memory_usage(contracts.post_key(post))
        hashes = pipe.execute()
    bucket = contracts.bucket_of(posts[0])
    ranks = {}
    for sort in rankings.SORTS:
        key = contracts.rank_key(bucket, sort)
        ranks[sort] = store.memory_usage(key, samples=0) / store.zcard(key)
    return {"hash": sum(hashes) / len(hashes), "sampled": len(hashes), "ranks": ranks,
            "encoding": store.object("encoding", contracts.top_key(bucket)),
            "listpack_limit": store.config_get("zset-max-listpack-entries")[
                "zset-max-listpack-entries"]}


class Footprint:
    """What Redis holds at one moment, split so that a window can be
    measured across a resize of a database's hash table (which doubles
    its bucket array at once): the objects, apart from the tables, and
    the keys, each charged the tables' bytes per key at the window's end."""

    def __init__(self, store):
        stats = store.memory_stats()
        self.tables = sum(
            value.get("overhead.hashtable.main", 0) + value.get("overhead.hashtable.expires", 0)
            for key, value in stats.items() if key.startswith("db.") and isinstance(value, dict))
        self.keys = int(stats["keys.count"])
        # what Redis allocated, less the client and AOF buffers, which come
        # and go with the traffic, and less the hash tables
        self.objects = (int(stats["total.allocated"]) - int(stats.get("clients.normal", 0))
                        - int(stats.get("clients.slaves", 0))
                        - int(stats.get("aof.buffer", 0)) - self.tables)

    def since(self, before):
        """Bytes added since ``before``: the objects, and each new key's
        share of the hash tables as they are now."""
        per_key = self.tables / self.keys if self.keys else 0
        return self.objects - before.objects + (self.keys - before.keys) * per_key


def rss(bench):
    bench.env.sample_memory()
    for name in ("gateway", "votes", "bare"):
        if name not in bench.env.peak_kb:
            continue
        bench.row("peak RSS, {}{}".format(
                     name, " (reference)" if name == "bare" else ""),
                  "{} MB".format(fmt(bench.env.peak_kb[name] / 1024, 1)), "",
                  "VmHWM in /proc/<pid>/status, sampled around every phase{}".format(
                     " (max of its 2 processes)" if name == "votes" else ""))
