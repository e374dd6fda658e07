"""Drain: the votes service stopped, votes queued through the gateway, one
votes process started; how fast it counts the backlog."""
import time

from bench import client
from bench.context import fmt
from bench.machine import cpu_seconds
from harness.process import VOTES
from services import contracts


def run(bench, kind):
    """Stop the votes service, queue votes through the gateway (as
    POST /votes batches, or as single votes), start one votes process
    and time how fast it counts them."""
    phase = "drain " + kind
    total = bench.p["drain_votes"]
    size = bench.p["batch_size"]
    bench.env.stop_service("votes")
    _, consumers = bench.env.queue_depth(contracts.VOTES_QUEUE)
    if consumers:
        bench.problems.append("{}: the votes queue still has a consumer".format(phase))
    host, port = bench.host_port("gateway")
    if kind == "batches":
        posts = bench.posts("db-", 100)
        bodies = []
        for start in range(0, total, size):
            bodies.append(client.batch_body([
                {"postId": posts[k % len(posts)], "score": -1 if k % 4 == 3 else 1}
                for k in range(start, min(total, start + size))]))
        accepted, failures, fill_seconds = client.post_batches(
            host, port, bodies, concurrency=16)
        if failures:
            bench.notes.append("{} fill: failed requests {}".format(phase, failures))
        how = "stop votes; POST /votes x{} c=16 ({:.1f} s); start votes".format(
            size, fill_seconds)
    else:
        posts = bench.posts("ds-")
        # about ``total`` votes at the rate measured before
        window = min(bench.p["drain_fill_max"],
                     max(1.0, total / max(1.0, bench.figures["max_single"])))
        result = bench.run_wrk("gateway", "vote", 64, "ds-", window)
        bench.check_wrk(phase, result, 202)
        accepted = result.count(202)
        how = "stop votes; wrk -c64 GET /vote {:.0f} s; start votes".format(
            result.window)
    bench.accepted[phase] = accepted
    events, _ = bench.env.queue_depth(contracts.VOTES_QUEUE)
    bench.env.sample_memory()

    start = time.perf_counter()
    pid = bench.env.start_service("votes", VOTES).pid
    cpu_before = None
    first = first_count = None
    done = None
    deadline = start + bench.p["settle_timeout"]
    while time.perf_counter() < deadline:
        if cpu_before is None:
            cpu_before = cpu_seconds(pid)
        got = bench.counted(posts)
        now = time.perf_counter()
        if got and first is None:
            first, first_count = now, got
        if got >= accepted:
            done = now
            if got > accepted:
                bench.problems.append("{}: {} counted, {} accepted".format(
                    phase, got, accepted))
            break
        bench.env.sample_memory()
        time.sleep(0.02)
    bench.env.sample_memory()
    cpu = cpu_seconds(pid)
    what = "drain {}: one votes process".format(
        "of batches" if kind == "batches" else "of single votes")
    if done is None:
        bench.problems.append("{}: not all {} votes counted in {:.0f} s".format(
            phase, accepted, bench.p["settle_timeout"]))
        bench.row(what, "n/a", "timed out", how)
        return
    # the votes counted between the first poll that saw any and the
    # last; if one poll saw them all, from the process start
    if done - first > 0.2:
        rate = (accepted - first_count) / (done - first)
        basis = "from the first vote counted"
    else:
        rate = accepted / (done - start)
        basis = "from process start (too few votes to leave the start-up out)"
    bench.figures[phase] = rate
    cpu_share = ((cpu - cpu_before) / (done - start)
                 if cpu is not None and cpu_before is not None else 0)
    bench.row(what, "{} votes/s".format(fmt(rate)),
              "{} in {:.1f} s".format(fmt(accepted), done - start),
              how + "; poll Redis every 20 ms",
              "{}; {} votes/s from process start; {} events of ~{} votes "
              "queued; votes process cpu {:.0f}%".format(
                 basis, fmt(accepted / (done - start)), fmt(events),
                 fmt(accepted / events) if events else "?", cpu_share * 100))
