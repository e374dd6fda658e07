"""Single votes: wrk GET /vote at each connection level, against the bare
service and the gateway in turn; every 202 counted before the next run."""
from bench.context import cpu_note, fmt
from bench.phases import bare


def run(bench):
    best = 0
    for connections in bench.p["levels"]:
        base = bench.run_wrk("bare", "vote", connections, "v{}-".format(connections))
        votes = bench.vote_run("single c{}".format(connections), connections,
                               "v{}-".format(connections))
        rate, bare_rate = votes.rate(202), base.rate(202)
        best = max(best, rate)
        bench.figures["votes_c{}".format(connections)] = rate
        bench.figures["bare_c{}".format(connections)] = bare_rate
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
