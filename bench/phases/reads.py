"""Reads: wrk GET /vote-counts on posts seeded first, against the bare
service and the gateway in turn, ``rounds`` times."""
from bench import client
from bench.context import cpu_note, fmt
from bench.phases import bare


def run(bench):
    # posts of their own, one vote each, so that every read finds its post
    prefix = "r-"
    posts = bench.posts(prefix)
    host, port = bench.host_port("gateway")
    accepted, failures, _ = client.post_batches(host, port, [
        client.batch_body([{"postId": post, "score": 1} for post in posts])])
    bench.accepted["reads seed"] = accepted
    if failures or accepted != len(posts):
        raise RuntimeError("reads: could not seed the posts: {}".format(failures))
    bench.settle("reads seed", posts, accepted)
    for connections in bench.p["levels"]:
        for _ in range(bench.p["rounds"]):
            _once(bench, connections, prefix)


def _once(bench, connections, prefix):
    base = bench.run_wrk("bare", "read", connections, prefix)
    reads = bench.run_wrk("gateway", "read", connections, prefix)
    bench.check_wrk("reads c{}".format(connections), reads, 200)
    misses = reads.count(404)
    rate, bare_rate = reads.rate(200), base.rate(200)
    bench.runs("reads/bare c{}".format(connections), rate / bare_rate if bare_rate else 0)
    bare.row(bench, "/vote-counts", connections, base, bare_rate)
    bench.row("reads GET /vote-counts, c={}".format(connections),
              "{} reads/s".format(fmt(rate)),
              "reads/bare {:.2f}".format(rate / bare_rate if bare_rate else 0),
              reads.command + " (gateway)",
              "p50 {:.1f} ms p99 {:.1f} ms; {}; {} posts{}".format(
                 reads.p50_ms, reads.p99_ms, cpu_note(reads.cpu),
                 bench.p["posts"],
                 "; {} answered 404".format(misses) if misses else ""))
    if misses:
        bench.problems.append("reads c{}: {} reads of existing posts "
                              "answered 404".format(connections, misses))
