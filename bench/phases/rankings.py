"""Rankings: the drain of a backlog with all four rankings kept by the
apply script, against the votes service of commit 556c710 (before
rankings, run from a copy of that commit); the apply script alone against
that commit's; and a page of 100 posts under each sort over HTTP, with
wrk."""
import ast
import json
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from bench import client, store_drain
from bench.context import cpu_note, fmt
from bench.machine import tree_of
from harness import rabbit
from harness.process import ROOT
from harness.redis_server import RedisServer
from services.votes import schemas
from services.votes.store import APPLY_GROUP_VOTES, Limits, VoteStorage, connect, scripts

BASELINE = "556c710"  # the last commit before rankings
SORTS = ("top", "best", "controversial", "hot")
PAGE = 100
CONNECTIONS = 16


def drain_rows(bench):
    folder = Path(tempfile.mkdtemp(prefix="rankings-drain-"))
    vhosts = rabbit.VhostPool(prefix="bench", batch=1)
    total = bench.p["store_drain_votes"]
    try:
        sides = (("before", tree_of(BASELINE, folder)), ("rankings", None))
        rounds = bench.p["rankings_rounds"]
        for size in bench.p["rankings_sizes"]:
            best = {}
            for turn in range(rounds):
                for label, root in sides:
                    row = folder / "{}-{}-{}".format(label, size, turn)
                    row.mkdir()
                    # a store each: both sides vote on the same posts
                    store = store_drain.Store("single", row)
                    try:
                        rate, _, _, _ = store_drain.drain(
                            store, size, total, 1000, bench.env.config_path, row,
                            vhosts, root=root, quiet=bench.p["quiet_drains"])
                    finally:
                        store.stop()
                    best[label] = max(best.get(label, 0), rate)
            ratio = best["rankings"] / best["before"]
            bench.row("drain with 4 rankings, events of {}".format(size),
                      "{} votes/s".format(fmt(best["rankings"])),
                      "x{:.2f} of {} ({} votes/s)".format(ratio, BASELINE,
                                                          fmt(best["before"])),
                      "python -m bench --only rankings: store_drain.drain on one "
                      "private Redis, {} votes queued, votes of this tree vs of "
                      "{}".format(fmt(total), BASELINE),
                      "best of {} alternating drains each; 1000 posts".format(rounds))
            if ratio < 0.8:
                bench.notes.append("rankings drain, events of {}: x{:.2f} of {}, "
                                   "below the 0.8 aimed at".format(size, ratio, BASELINE))
    finally:
        vhosts.close(patience=60)
        shutil.rmtree(folder, ignore_errors=True)


def _baseline_script():
    """BASELINE's apply script, read from git."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", BASELINE + ":services/votes/dependencies.py"],
        capture_output=True, check=True, text=True).stdout
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "APPLY_SCRIPT":
            return ast.literal_eval(node.value)
    raise RuntimeError("no APPLY_SCRIPT at " + BASELINE)


class _Before(VoteStorage):
    """The store with BASELINE's script. It reads the same command: its
    votes name their keys by index, and it never looks past the top's key
    or a vote's 8th field, where the rankings' keys and createdAt are."""

    script = _baseline_script()

    def _command(self, parts):
        command = super()._command(parts)
        return command._replace(args=("EVALSHA", scripts.sha(self.script), *command.args[2:]),
                                script=self.script)

    def _part_results(self, reply, count):
        # BASELINE's script answers the totals of the call
        return [reply] + [[0, 0, 0]] * (count - 1)


def _redis_usec(client):
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return stats.get("usec", 0)


def script_rows(bench):
    """Each script applies the same events from this process, alternately,
    on a private Redis: BASELINE's and this tree's one event per call, and
    this tree's in groups as the service makes them (apply_many, up to
    APPLY_GROUP_VOTES votes a call); Redis's own time in EVALSHA per vote,
    and votes/s."""
    folder = Path(tempfile.mkdtemp(prefix="rankings-script-"))
    server = RedisServer(folder, *store_drain.REDIS_OPTIONS)
    server.start()
    rng = random.Random(17)
    posts = ["s-{}".format(i) for i in range(1000)]
    try:
        client = connect(server.uri)
        limits = Limits(3600, 3600, 2.0, 3600)
        sides = {"before": _Before(client, limits), "rankings": VoteStorage(client, limits),
                 "grouped": VoteStorage(client, limits)}
        for size in bench.p["rankings_sizes"]:
            events = [[schemas.parse_vote({
                "voteId": uuid.uuid4().hex, "postId": rng.choice(posts),
                "score": 1 if k % 4 else -1, "ts": 1_700_000_000_000_000 + k})
                for k in range(size)] for _ in range(bench.p["store_drain_votes"] // size)]
            per_call = max(1, APPLY_GROUP_VOTES // size)
            best = {}
            for _ in range(3):
                for label, storage in sides.items():
                    client.flushdb()
                    client.config_resetstat()
                    start = time.perf_counter()
                    if label == "grouped":
                        for first in range(0, len(events), per_call):
                            storage.apply_many([(uuid.uuid4().hex, votes)
                                                for votes in events[first:first + per_call]])
                    else:
                        for votes in events:
                            storage.apply(uuid.uuid4().hex, votes)
                    seconds = time.perf_counter() - start
                    total = len(events) * size
                    usec = _redis_usec(client) / total
                    rate, old_usec = best.get(label, (0, usec))
                    best[label] = (max(rate, total / seconds), min(old_usec, usec))
            for label, how in (("rankings", "one event a call"),
                               ("grouped", "{} events a call".format(per_call))):
                bench.row("apply script with 4 rankings, events of {}, {}".format(size, how),
                          "{} votes/s".format(fmt(best[label][0])),
                          "x{:.2f} of {} ({} votes/s)".format(
                              best[label][0] / best["before"][0], BASELINE,
                              fmt(best["before"][0])),
                          "VoteStorage.apply{}, one client, one private Redis; the "
                          "same events with {}'s script, one event a call".format(
                              "_many" if label == "grouped" else "", BASELINE),
                          "Redis time in EVALSHA {:.1f} us a vote, {:.1f} us at {}; "
                          "best of 3 alternating runs of {} votes".format(
                              best[label][1], best["before"][1], BASELINE,
                              fmt(len(events) * size)))
        client.close()
    finally:
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _seed(bench, prefix):
    """Posts with varied counts and creation times, so every sort differs."""
    posts = bench.posts(prefix)
    votes = []
    for i, post in enumerate(posts):
        created = 1_700_000_000 + (i * 7919) % 1_000_000
        for k in range(1 + i % 7):
            votes.append({"postId": post, "score": 1 if (i + k) % 3 else -1,
                          "createdAt": created})
    bodies = [client.batch_body(votes[i:i + 1000]) for i in range(0, len(votes), 1000)]
    host, port = bench.host_port("gateway")
    accepted, failures, _ = client.post_batches(host, port, bodies)
    if failures or accepted != len(votes):
        raise RuntimeError("rankings: could not seed the posts: {}".format(failures))
    bench.accepted["rankings seed"] = accepted
    bench.settle("rankings seed", posts, accepted)


def page_rows(bench):
    _seed(bench, "k-")
    host, port = bench.host_port("gateway")
    paths = [("as before", "/posts/top?limit={}".format(PAGE))]
    paths += [("sort=" + sort, "/posts/top?sort={}&limit={}".format(sort, PAGE))
              for sort in SORTS]
    with urllib.request.urlopen("http://{}:{}{}".format(host, port, paths[-1][1]),
                                timeout=10) as answer:
        cursor = json.load(answer)["next"]
    paths.append(("sort=hot, second page", "/posts/top?sort=hot&limit={}&after={}".format(
        PAGE, cursor)))
    for what, path in paths:
        result = bench.run_wrk("gateway", "page", CONNECTIONS, path)
        bench.check_wrk("page " + what, result, 200)
        bench.row("page of {} GET /posts/top, {}".format(PAGE, what),
                  "{} req/s".format(fmt(result.rate(200))), "c={}".format(CONNECTIONS),
                  result.command + " (gateway)",
                  "p50 {:.1f} ms p99 {:.1f} ms; {}; {} posts".format(
                      result.p50_ms, result.p99_ms, cpu_note(result.cpu),
                      bench.p["posts"]))


def run(bench):
    page_rows(bench)
    script_rows(bench)
    drain_rows(bench)
