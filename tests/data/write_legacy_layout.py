"""Writes tests/data/legacy_layout.json: the keys the votes store wrote
before buckets (commit c2aed70), for the migration test.

Run from a checkout of c2aed70, with a Redis to write to (flushed):

    python tests/data/write_legacy_layout.py redis://127.0.0.1:7190/0 out.json

It applies events through that version's VoteStorage (votes with and
without voters, a retraction, an Idempotency-Key, a redelivery) and dumps
every key with its type, value and TTL.
"""
import json
import sys

import redis

from services.votes import schemas
from services.votes.store import Limits, VoteStorage

EVENTS = [
    ("e1", [{"postId": "348", "score": 1}, {"postId": "348", "score": 1},
            {"postId": "9", "score": -1}]),
    ("e2", [{"postId": "348", "score": -1, "voterId": "ann"},
            {"postId": "p-2", "score": 1, "voterId": "bob"},
            {"postId": "p-3", "score": 1, "voterId": "bob"}]),
    ("e3", [{"postId": "p-2", "score": 1, "voterId": "ann"},
            {"postId": "p-3", "score": 0, "voterId": "bob"}]),
    ("e4", [{"postId": "p-4", "score": 1, "key": "a" * 32, "voteId": "a" * 32,
             "fp": "f" * 16},
            {"postId": "9", "score": 1, "key": "a" * 32, "voteId": "a" * 32 + "-1",
             "fp": "f" * 16}]),
]


def main(uri, out):
    client = redis.Redis.from_url(uri, decode_responses=True)
    client.flushdb()
    storage = VoteStorage(client, Limits(mark_ttl=86400, idempotency_ttl=86400,
                                         clock_skew=2.0, retraction_ttl=3600))
    ts = 1_700_000_000_000_000
    for event_id, votes in EVENTS + EVENTS[:1]:  # e1 twice: a redelivery
        parsed = []
        for i, vote in enumerate(votes):
            ts += 1
            parsed.append(schemas.parse_vote(dict(
                {"voteId": "{}-{}".format(event_id, i), "ts": ts}, **vote)))
        storage.apply(event_id, parsed)
    dump = []
    for key in sorted(client.scan_iter("*")):
        kind = client.type(key)
        value = {"string": client.get, "hash": client.hgetall,
                 "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind](key)
        dump.append({"key": key, "type": kind, "value": value,
                     "ttl": client.ttl(key)})
    with open(out, "w") as handle:
        json.dump(dump, handle, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
