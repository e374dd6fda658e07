"""The yardstick: a bare nameko ``@http`` service (bench/bare.py) measured
with the same wrk runs as the gateway; and the warm-up of both."""
from bench.context import cpu_note, fmt


def warm_up(bench):
    window = bench.p["warmup"]
    bench.run_wrk("bare", "vote", 16, "w", window)
    bench.vote_run("warm-up", 16, "w-", window)
    bench.run_wrk("bare", "read", 16, "w-", window)
    bench.run_wrk("gateway", "read", 16, "w-", window)


def row(bench, path, connections, bare, bare_rate):
    bench.row("bare @http GET {}, c={}".format(path, connections),
              "{} req/s".format(fmt(bare_rate)), "",
              bare.command + " (bare)",
              "p50 {:.1f} ms p99 {:.1f} ms; {}".format(
                 bare.p50_ms, bare.p99_ms, cpu_note(bare.cpu)))
