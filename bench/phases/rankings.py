"""Rankings: the drain of a backlog with all four rankings kept by the
apply script, against the votes service of commit 556c710 (before
rankings, run from a copy of that commit); and a page of 100 posts under
each sort over HTTP, with wrk."""
import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from bench import client, store_drain
from bench.context import cpu_note, fmt
from harness import rabbit
from harness.process import ROOT

BASELINE = "556c710"  # the last commit before rankings
SORTS = ("top", "best", "controversial", "hot")
PAGE = 100
CONNECTIONS = 16


def _baseline_tree(folder):
    """A copy of BASELINE's files (git archive), to run its votes service."""
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def drain_rows(bench):
    folder = Path(tempfile.mkdtemp(prefix="rankings-drain-"))
    vhosts = rabbit.VhostPool(prefix="bench", batch=1)
    total = bench.p["store_drain_votes"]
    try:
        sides = (("before", _baseline_tree(folder)), ("rankings", None))
        rounds = bench.p["rankings_rounds"]
        for size in bench.p["rankings_sizes"]:
            best = {}
            for turn in range(rounds):
                for label, root in sides:
                    row = folder / "{}-{}-{}".format(label, size, turn)
                    row.mkdir()
                    rate, _, _ = store_drain.drain(
                        "single", size, total, 1000, bench.env.config_path, row, vhosts,
                        root=root)
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
    drain_rows(bench)
