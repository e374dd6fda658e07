"""The runner: sets up, runs each phase (bench/phases) in turn, prints
and writes the table. Entry point: ``python -m bench``."""
import argparse
import os
import signal
import sys
import time
import traceback

from bench import report, store_drain
from bench.context import Bench
from bench.env import Environment, SetupError, ensure_wrk
from bench.machine import code_version, machine_info, versions
from bench.phases import (
    bare,
    batch,
    capacity,
    checks,
    drain,
    latency,
    memory,
    mq_cluster,
    rankings,
    reads,
    single,
    streams,
    targets,
    trust,
)
from harness.process import GATEWAY, ROOT, VOTES

RESULTS = os.path.join(ROOT, "bench", "results", "latest.txt")
# the smoke test must not overwrite the last full run
RESULTS_QUICK = os.path.join(ROOT, "bench", "results", "latest-quick.txt")

PROFILES = {
    "full": {
        "window": 10.0,         # seconds of each wrk measurement
        "tail": 0.2,            # harmless requests after it (see wrk.py)
        "warmup": 2.0,
        "levels": (16, 64),     # wrk connections for single votes and reads
        "batch_connections": 16,
        "batch_size": 100,
        "posts": 1000,          # posts per throughput phase
        "drain_votes": 100_000,
        "drain_fill_max": 45.0,  # seconds of single votes at most
        "store_drain_votes": 50_000,  # per row: one Redis, Redis Cluster x 10, 500
        "latency_window": 10.0,
        "probe_rate": 100,      # probes per second in the latency phase
        "memory_posts": 20_000,
        "memory_voter_votes": 20_000,
        "memory_voter_posts": 20,
        "memory_keys": 10_000,
        "streams": 1000,        # GET /stream clients on the gateway
        "streams_probes": 1000,  # probe votes timed to their counts event
        "announce_posts": 10_000,  # posts changed each second
        "announce_seconds": 5,
        "settle_timeout": 120.0,
        "mq_cluster": True,     # boot four private RabbitMQ nodes
        "rankings_sizes": (10, 500),  # votes per event of the rankings drains
        "rankings_rounds": 3,         # drains per side and size; the best counts
        "rounds": 3,            # runs of single votes, reads, latency (medians)
        "targets_cpu": True,    # drains against the votes service of targets.BASELINE
        "quiet_drains": True,   # each store drain waits for an idle machine
        "capacity": True,       # the capacity phase on a private RabbitMQ node
        "capacity_votes": 100_000,  # each half of each capacity drain
    },
    "quick": {
        "window": 1.0,
        "tail": 0.2,
        "warmup": 0.3,
        "levels": (16, 64),
        "batch_connections": 16,
        "batch_size": 100,
        "posts": 200,
        "drain_votes": 5_000,
        "drain_fill_max": 3.0,
        "store_drain_votes": 2_000,
        "latency_window": 1.0,
        "probe_rate": 100,
        "memory_posts": 2_000,
        "memory_voter_votes": 2_000,
        "memory_voter_posts": 4,
        "memory_keys": 1_000,
        "streams": 20,
        "streams_probes": 40,
        "announce_posts": 1_000,
        "announce_seconds": 1,
        "settle_timeout": 60.0,
        "mq_cluster": False,
        "rankings_sizes": (500,),
        "rankings_rounds": 1,
        "rounds": 1,
        "targets_cpu": False,
        "quiet_drains": False,  # (make test runs it beside busy tests)
        "capacity": False,      # only the gateway's cost, on the run's broker
    },
}


# the phases in order; each takes the Bench. The warm-up always runs, and
# the correctness line always ends the run.
PHASES = (
    ("single", single.run),
    ("mq_cluster", mq_cluster.run),
    ("reads", reads.run),
    ("batch", batch.run),
    ("drain", lambda bench: (drain.run(bench, "batches"), drain.run(bench, "single"))),
    ("store_drain", store_drain.run),
    ("latency", latency.run),
    ("memory", lambda bench: (memory.run(bench), memory.rss(bench))),
    ("streams", streams.run),
    ("trust", trust.run),
    ("rankings", rankings.run),
    ("targets", lambda bench: bench.p["targets_cpu"] and targets.run(bench)),
    ("capacity", capacity.run),
)
# phases that use a figure of another
NEEDS = {"drain": "single", "latency": "single"}


def chosen_phases(only):
    """The phases to run: all, or those named (comma-separated) with the
    ones they need."""
    if not only:
        return [run for _, run in PHASES]
    names = set(only.split(","))
    unknown = names - {name for name, _ in PHASES}
    if unknown:
        raise SystemExit("--only: no phase {}; phases: {}".format(
            ", ".join(sorted(unknown)), ", ".join(name for name, _ in PHASES)))
    names |= {NEEDS[name] for name in names if name in NEEDS}
    return [run for name, run in PHASES if name in names]


class Interrupted(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted("signal {}".format(signum))


def render(info, versions, rows, notes, elapsed, mode, after=()):
    lines = [
        "vote bench ({}) {}".format(mode, info["date"]),
        "machine: nproc {} | {} | {} | kernel {} | load {} at start".format(
            info["nproc"], info["cpu"], info["memory"], info["kernel"], info["load"]),
        "software: Python {} | {}".format(info["python"], versions),
        code_version(),
        "",
    ]
    header = ("what", "figure", "ratio / at", "measured by")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    line = "{:<%d}  {:>%d}  {:<%d}  {}" % tuple(widths[:3])
    lines.append(line.format(*header))
    lines.append("-" * (sum(widths) + 6))
    for what, figure, key, how, detail in rows:
        lines.append(line.format(what, figure, key, how))
        if detail:
            lines.append("    " + detail)
    lines.append("")
    for note in notes:
        lines.append("note: " + note)
    if after:
        lines += [""] + list(after) + [""]
    lines.append("bench took {:.0f} s; load average {} at the end".format(
        elapsed, "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: short phases, small counts")
    parser.add_argument("--config", default=os.path.join(ROOT, "config.yml"),
                        help="nameko config for the services (default config.yml)")
    parser.add_argument("--out", help="where to write the table too (default "
                        "bench/results/latest.txt, latest-quick.txt with --quick)")
    parser.add_argument("--only", metavar="PHASE[,PHASE]",
                        help="run only these phases (and those they need): "
                        + ", ".join(name for name, _ in PHASES))
    args = parser.parse_args(argv)
    phases = chosen_phases(args.only)
    mode = "quick" if args.quick else "full"
    out = args.out or (RESULTS_QUICK if args.quick else RESULTS)
    if args.only and not args.out:  # nor a part of one
        out = out.replace(".txt", "-only.txt")
    profile = PROFILES[mode]
    if args.only:
        mode += ", only " + args.only
    # Ctrl-C interrupts even when started with SIGINT ignored (as a
    # background job); SIGTERM and SIGHUP clean up the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)

    started = time.perf_counter()
    info = machine_info()
    print("vote bench ({}): nproc {}, {}, {}".format(
        mode, info["nproc"], info["cpu"], info["date"]), flush=True)
    env = None
    try:
        wrk_path = ensure_wrk()
        env = Environment(os.path.abspath(args.config))
        env.make_vhost()
        env.start_redis()
        bare_service = env.start_service("bare", "bench.bare", http=True)
        env.start_service("votes", VOTES)
        gateway = env.start_service("gateway", GATEWAY, http=True)
        bare_service.wait_http("/vote", 30, {202})
        # a 404 for an unknown post means the RPC path to votes works too
        gateway.wait_http("/vote-counts?postId=bench-ready", 60, {404})
        print("started: vhost {}, {}, gateway :{}, bare :{}".format(
            env.vhost, env.redis_uri, gateway.port, bare_service.port), flush=True)
        soft = versions(env)
        bench = Bench(env, profile, wrk_path)
        bare.warm_up(bench)
        for phase in phases:
            phase(bench)
        checks.redis_stalls(bench)
        ok = checks.correctness(bench)
        text = render(info, soft, bench.rows, bench.notes,
                      time.perf_counter() - started, mode,
                      targets.table(bench) + capacity.table(bench))
        print()
        print(text)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as handle:
            handle.write(text + "\n")
        if profile is PROFILES["full"] and not args.only and not args.out:
            report.write(text)
            print("written: {}".format(os.path.relpath(report.DOCS_PAGE, ROOT)))
        return 0 if ok else 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except SetupError as exc:
        print("bench setup failed: {}".format(exc), file=sys.stderr)
        if env:
            env.failed = True
        return 2
    except Exception:
        traceback.print_exc()
        if env:
            env.failed = True
        return 2
    finally:
        if env is not None:
            env.close()
