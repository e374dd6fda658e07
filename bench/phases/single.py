"""Single votes: wrk GET /vote at each connection level, against the bare
service, the gateway, and the gateway publishing transient messages
(bench.transient: what the durable confirm costs) in turn, ``rounds``
times; every 202 counted before the next run."""
from bench.context import cpu_note, fmt
from bench.phases import bare

TRANSIENT = "gateway-transient"


def cpu_us(result, name, rate):
    """Microseconds of ``name``'s CPU per answer of the run, or None."""
    share = result.cpu.get(name)
    return share / rate * 1e6 if share and rate else None


def run(bench):
    transient = bench.env.start_service(TRANSIENT, "bench.transient", http=True)
    try:
        transient.wait_http("/vote-counts?postId=bench-ready", 60, {404})
        return _run(bench)
    finally:
        bench.env.stop_service(TRANSIENT)


def _run(bench):
    best = 0
    for connections in bench.p["levels"]:
        for turn in range(bench.p["rounds"]):
            prefix = "v{}-{}-".format(connections, turn)
            base = bench.run_wrk("bare", "vote", connections, prefix)
            votes = bench.vote_run("single c{} run {}".format(connections, turn + 1),
                                   connections, prefix)
            light = bench.vote_run(
                "single transient c{} run {}".format(connections, turn + 1),
                connections, "t" + prefix, target=TRANSIENT,
                watch=dict(bench.watch("votes", "bare"),
                           transient=bench.env.services[TRANSIENT].pid))
            bare_rate = base.rate(202)
            best = max(best, votes.rate(202))
            bench.runs("vote p50 - bare p50 c{}".format(connections),
                       votes.p50_ms - base.p50_ms)
            bare_us = cpu_us(base, "bare", bare_rate)
            bare.row(bench, "/vote", connections, base, bare_rate)
            for label, result, source, process, series in (
                    ("", votes, "gateway", "gateway", "votes"),
                    (", transient messages", light, TRANSIENT, "transient", "transient")):
                rate = result.rate(202)
                ratio = rate / bare_rate if bare_rate else 0
                bench.runs("{}/bare c{}".format(series, connections), ratio)
                own_us = cpu_us(result, process, rate)
                if own_us and bare_us:
                    bench.runs("{} cpu/bare cpu c{}".format(process, connections),
                               own_us / bare_us)
                    # votes/bare = (busy / bare's busy) x (bare's CPU / own CPU)
                    bench.runs("{} busy c{}".format(process, connections),
                               result.cpu[process])
                    bench.runs("{} busy/bare busy c{}".format(process, connections),
                               result.cpu[process] / base.cpu["bare"])
                    bench.runs("{} waiting c{}".format(process, connections),
                               result.waiting.get(process, 0.0))
                bench.row("single votes GET /vote{}, c={}".format(label, connections),
                          "{} votes/s".format(fmt(rate)), "votes/bare {:.2f}".format(ratio),
                          "{} ({})".format(result.command, source),
                          "p50 {:.1f} ms p99 {:.1f} ms; {}; all counted {:.1f} s "
                          "after the run; {} us of CPU a vote, the bare endpoint {} "
                          "a request; {} runnable but waiting for a core {:.0%}".format(
                              result.p50_ms, result.p99_ms, cpu_note(result.cpu),
                              result.settle, fmt(own_us), fmt(bare_us), process,
                              result.waiting.get(process, 0.0)))
    bench.figures["max_single"] = best
    return best
