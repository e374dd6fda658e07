"""Single votes: wrk GET /vote at each connection level, against the bare
service and the gateway in turn, ``rounds`` times; every 202 counted
before the next run."""
from bench.context import cpu_note, fmt
from bench.phases import bare


def run(bench):
    best = 0
    for connections in bench.p["levels"]:
        for turn in range(bench.p["rounds"]):
            prefix = "v{}-{}-".format(connections, turn)
            base = bench.run_wrk("bare", "vote", connections, prefix)
            votes = bench.vote_run("single c{} run {}".format(connections, turn + 1),
                                   connections, prefix)
            rate, bare_rate = votes.rate(202), base.rate(202)
            best = max(best, rate)
            bench.runs("votes/bare c{}".format(connections),
                       rate / bare_rate if bare_rate else 0)
            bench.runs("vote p50 - bare p50 c{}".format(connections),
                       votes.p50_ms - base.p50_ms)
            bare.row(bench, "/vote", connections, base, bare_rate)
            bench.row("single votes GET /vote, c={}".format(connections),
                      "{} votes/s".format(fmt(rate)),
                      "votes/bare {:.2f}".format(rate / bare_rate if bare_rate else 0),
                      votes.command + " (gateway)",
                      "p50 {:.1f} ms p99 {:.1f} ms; {}; all counted {:.1f} s "
                      "after the run".format(votes.p50_ms, votes.p99_ms,
                                             cpu_note(votes.cpu), votes.settle))
    bench.figures["max_single"] = best
    return best
