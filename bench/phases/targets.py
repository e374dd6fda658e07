"""The targets of the throughput work, in its own layout: each figure the
median of ``rounds`` runs (single votes, reads and latency repeat that
many times), with every run and the command behind it. The votes
process's CPU per 100k applied votes is measured here, against the votes
service of BASELINE (the tree the targets were set against, run from a
copy of that commit): drains of the ~49-vote events the gateway makes
under load, alternately."""
import shutil
import statistics
import tempfile
from pathlib import Path

from bench import store_drain
from bench.context import fmt
from bench.machine import tree_of
from harness import rabbit

BASELINE = "1deb8e3"  # the last commit of 2026-11-27, the targets' "today"
EVENT_VOTES = 49


def run(bench):
    """The votes process's CPU s per 100k votes, this tree and BASELINE."""
    folder = Path(tempfile.mkdtemp(prefix="targets-"))
    vhosts = rabbit.VhostPool(prefix="bench", batch=1)
    total = bench.p["store_drain_votes"]
    store = None
    try:
        baseline = tree_of(BASELINE, folder)
        (folder / "store").mkdir()
        store = store_drain.Store("single", folder / "store")
        sides = (
            ("this", dict(base_config=bench.env.config_path)),
            (BASELINE, dict(base_config=str(baseline / "config.yml"), root=baseline,
                            post_key="votes:post:{}".format)),
        )
        for turn in range(bench.p["rounds"]):
            for label, options in sides:
                row = folder / "{}-{}".format(label, turn)
                row.mkdir()
                client = store.client()
                client.flushall()
                client.close()
                _, cpu_per_vote, _, _ = store_drain.drain(
                    store, EVENT_VOTES, total, 1000, folder=row, vhosts=vhosts,
                    quiet=bench.p["quiet_drains"], **options)
                bench.runs("cpu " + label, cpu_per_vote * 100_000)
    finally:
        if store is not None:
            store.stop()
        vhosts.close(patience=60)
        shutil.rmtree(folder, ignore_errors=True)


def _median(bench, name):
    runs = bench.series.get(name, [])
    return (statistics.median(runs) if runs else None), runs


def table(bench):
    """The targets table's lines (markdown), from the runs of this bench."""
    c16, c64 = bench.p["levels"]
    rows = []

    def ratio(figure, name, target, command):
        median, runs = _median(bench, name)
        rows.append((figure, "≥ {:.2f}".format(target),
                     "n/a" if median is None else "{:.2f}".format(median),
                     ", ".join("{:.2f}".format(r) for r in runs),
                     median is not None and median >= target, command))

    wrk = "wrk -t1 -c{} {:g}s GET {} (bench/wrk.lua), the bare @http service, then the gateway"
    window = bench.p["window"]
    for c in (c16, c64):
        ratio("single votes / bare, {} connections".format(c), "votes/bare c{}".format(c),
              0.85, wrk.format(c, window, "/vote"))
    for c in (c16, c64):
        ratio("reads / bare, {} connections".format(c), "reads/bare c{}".format(c),
              0.90, wrk.format(c, window, "/vote-counts"))
    median, runs = _median(bench, "vote p50 - bare p50 c{}".format(c16))
    rows.append(("p50 latency of a vote at {} connections".format(c16), "≤ bare p50 + 5 ms",
                 "n/a" if median is None else "bare + {:.1f} ms".format(median),
                 ", ".join("+{:.1f}".format(r) for r in runs),
                 median is not None and median <= 5.0,
                 "the p50s of the single-vote runs above (wrk's latency)"))
    mine, my_runs = _median(bench, "cpu this")
    theirs, their_runs = _median(bench, "cpu " + BASELINE)
    rows.append(("votes-service CPU seconds per 100k applied votes",
                 "half of {}'s".format(BASELINE),
                 "n/a" if mine is None or not theirs else "{:.2f} s, x{:.2f} of {:.2f} s".format(
                     mine, mine / theirs, theirs),
                 "{} against {}".format(", ".join("{:.2f}".format(r) for r in my_runs),
                                        ", ".join("{:.2f}".format(r) for r in their_runs))
                 if my_runs else "not measured (--quick)",
                 mine is not None and bool(theirs) and mine <= theirs / 2,
                 "python -m bench --only targets: drains of {} votes in events of {}, "
                 "this tree and {} alternately (bench.store_drain)".format(
                     fmt(bench.p["store_drain_votes"]), EVENT_VOTES, BASELINE)))
    median, runs = _median(bench, "202 -> visible p99")
    rows.append(("p99 from 202 to visible, at half load", "≤ 50 ms",
                 "n/a" if median is None else "{:.1f} ms".format(median),
                 ", ".join("{:.1f}".format(r) for r in runs),
                 median is not None and median <= 50.0,
                 "python -m bench --only latency: asyncio open loop at half the best "
                 "single-vote rate, probes polled in Redis"))
    counted, accepted = bench.figures.get("counted"), bench.figures.get("accepted")
    off = None if counted is None else abs(counted - accepted)
    rows.append(("lost or doubled", "0", "n/a" if off is None else fmt(off), "",
                 off == 0, "correctness: every phase settled exactly, then every "
                 "post's counts summed against the 202s"))
    lines = ["targets: the median of {} run{} each".format(
                 bench.p["rounds"], "" if bench.p["rounds"] == 1 else "s"), "",
             "| figure | target | median | runs | met | measured by |",
             "|---|---|---|---|---|---|"]
    for figure, target, median, runs, met, command in rows:
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            figure, target, median, runs or "-", "yes" if met else "**no**", command))
    lines += ["", "what the durable confirm costs: single votes through a gateway "
              "publishing transient messages (bench.transient), in the same rounds"]
    for c in (c16, c64):
        light, light_runs = _median(bench, "transient/bare c{}".format(c))
        durable_runs = bench.series.get("votes/bare c{}".format(c), [])
        shares = [d / t for d, t in zip(durable_runs, light_runs, strict=True) if t]
        if light is None:
            lines.append("- c{}: not measured".format(c))
            continue
        lines.append("- c{}: transient/bare {:.2f} ({}); durable/transient {:.2f} ({})".format(
            c, light, ", ".join("{:.2f}".format(r) for r in light_runs),
            statistics.median(shares) if shares else 0,
            ", ".join("{:.2f}".format(r) for r in shares)))
    lines += ["", "CPU a vote against the bare endpoint's CPU a request (the median "
              "and the runs), from the same wrk runs"]
    for c in (c16, c64):
        parts = []
        for process in ("gateway", "transient"):
            median, runs = _median(bench, "{} cpu/bare cpu c{}".format(process, c))
            parts.append("{} {}".format(process, "n/a" if median is None else "x{:.2f} ({})".format(
                median, ", ".join("{:.2f}".format(r) for r in runs))))
        lines.append("- c{}: {}".format(c, "; ".join(parts)))
    return lines + _where_votes_go(bench, (c16, c64))


def _where_votes_go(bench, levels):
    """votes/bare split into its two factors, per level: how much of the
    time the gateway works, and how much it pays a vote against the bare
    endpoint's request. The first bounds the ratio whatever a vote costs."""
    lines = ["", "where single votes go: votes/bare = (the gateway's busy share / the "
             "bare endpoint's) x (the bare endpoint's CPU a request / the gateway's "
             "CPU a vote); the medians of the runs"]
    for c in levels:
        ratio, _ = _median(bench, "votes/bare c{}".format(c))
        share, _ = _median(bench, "gateway busy/bare busy c{}".format(c))
        cost, _ = _median(bench, "gateway cpu/bare cpu c{}".format(c))
        busy, _ = _median(bench, "gateway busy c{}".format(c))
        waiting, _ = _median(bench, "gateway waiting c{}".format(c))
        light, _ = _median(bench, "transient busy c{}".format(c))
        if None in (ratio, share, cost, busy, waiting):
            lines.append("- c{}: not measured".format(c))
            continue
        lines.append(
            "- c{}: {:.2f} = {:.2f} x {:.2f}; the gateway busy {:.0%}, runnable but "
            "waiting for a core {:.0%}, idle {:.0%}{}: a vote costing no more CPU than "
            "a bare request would give at most {:.2f}".format(
                c, ratio, share, 1 / cost, busy, waiting, max(0.0, 1 - busy - waiting),
                "" if light is None else " (the transient gateway busy {:.0%})".format(light),
                share))
    return lines
