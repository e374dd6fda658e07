"""``make test``: the whole suite, as four pytest runs side by side, then one alone.

The fault and cluster tests spend most of their time waiting (for
outages, restarts, failovers, queues to drain) on servers of their own: a
private RabbitMQ node, private redis-servers, a Redis Cluster, a
three-node RabbitMQ cluster. So they run as two more pytest runs next to
the rest of the suite instead of after it, and so does the bench's smoke
run (about 80 s, mostly its own processes starting and waiting). The rest
streams to the terminal; the other runs' output is kept in files and
printed when they end. The edge tests run last, alone. The exit status is
non-zero if any run fails. Arguments are passed to every run.

pytest-xdist is no help here: its workers hang under eventlet's monkey
patching.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (label, pytest arguments); the first streams to the terminal
BENCH_SMOKE = "tests/integration/test_bench_smoke.py"
REDIS_CLUSTER_FAULTS = "tests/fault/test_redis_cluster.py"
OPENAPI = "tests/integration/test_openapi.py"  # schemathesis: about 80 s
GROUPS = (
    ("suite", ["tests", "--ignore=tests/fault", "--ignore=tests/edge",
               "--ignore=tests/cluster", "--ignore=" + BENCH_SMOKE,
               "--ignore=" + OPENAPI]),
    # servers of their own (a private RabbitMQ node, private redis-servers)
    ("fault", ["tests/fault", "--ignore=" + REDIS_CLUSTER_FAULTS]),
    # a Redis Cluster and a three-node RabbitMQ cluster of their own
    ("cluster", ["tests/cluster", REDIS_CLUSTER_FAULTS]),
    # the bench's smoke run (its own vhost, redis-servers and processes),
    # and the OpenAPI check, so that no run is much longer than the others
    ("bench", [BENCH_SMOKE, OPENAPI]),
)
# then, alone: the edge tests bound how late a slow client is cut, which
# two busy runs on two cores can stretch
AFTER = ("edge", ["tests/edge"])


def main(argv):
    started = time.monotonic()
    runs = []
    try:
        for index, (label, paths) in enumerate(GROUPS):
            command = [sys.executable, "-m", "pytest", *paths, *argv]
            if index == 0:
                out = None
            else:
                out = tempfile.NamedTemporaryFile(
                    "w+", prefix="vote-tests-", suffix=".log", delete=False)
            process = subprocess.Popen(command, cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT if out else None,
                                       start_new_session=True)
            runs.append((label, process, out))
        codes = [process.wait() for _, process, _ in runs]
        for label, _, out in runs[1:]:
            out.seek(0)
            print("\n{0} {1} (run alongside) {0}".format("=" * 20, label))
            sys.stdout.write(out.read())
            out.close()
            os.unlink(out.name)
        label, paths = AFTER
        print("\n{0} {1} (alone) {0}".format("=" * 20, label), flush=True)
        process = subprocess.Popen([sys.executable, "-m", "pytest", *paths, *argv],
                                   cwd=ROOT, start_new_session=True)
        runs.append((label, process, None))
        codes.append(process.wait())
    except KeyboardInterrupt:
        for _, process, _ in runs:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for _, process, _ in runs:
            process.wait()
        return 130
    print("\n{}".format("=" * 60))
    for (label, _, _), code in zip(runs, codes, strict=True):
        print("{:12} {}".format(label, "passed" if code == 0 else
                                "FAILED (exit code {})".format(code)))
    print("wall time   {:.0f} s".format(time.monotonic() - started))
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
