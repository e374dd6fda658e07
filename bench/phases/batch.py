"""Batches: wrk POST /votes of ``batch_size`` votes each."""
from bench.context import cpu_note, fmt


def run(bench):
    size = bench.p["batch_size"]
    connections = bench.p["batch_connections"]
    phase = "batch"
    posts = bench.posts("b-")
    result = bench.run_wrk("gateway", "batch", connections, "b-", batch=size)
    at_end = bench.counted(posts)
    bench.check_wrk(phase, result, 202)
    accepted = result.count(202) * size
    bench.accepted[phase] = accepted
    refused = sum(n for code, n in result.statuses.items() if code >= 500)
    settle = bench.settle(phase, posts, accepted, refused=refused * size)
    rate = accepted / result.window
    bench.figures["batch"] = rate
    bench.row("batch votes POST /votes x{}, c={}".format(size, connections),
              "{} votes/s".format(fmt(rate)),
              "{} req/s".format(fmt(result.rate(202))),
              result.command + " (gateway)",
              "p50 {:.1f} ms p99 {:.1f} ms; {}; backlog of {} votes after "
              "the run, counted {:.1f} s later".format(
                 result.p50_ms, result.p99_ms, cpu_note(result.cpu),
                 fmt(accepted - at_end), settle))
