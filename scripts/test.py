"""``make test``: the whole suite, as two pytest runs side by side.

The fault tests spend most of their time waiting (for outages, restarts,
queues to drain) on servers of their own: a private RabbitMQ node and
private redis-servers. So they run next to the rest of the suite instead
of after it. The rest streams to the terminal; the second run's output is
kept in a file and printed when it ends. The edge tests run last, alone.
The exit status is non-zero if any run fails. Arguments are passed to
every run.

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
GROUPS = (
    ("suite", ["tests", "--ignore=tests/fault", "--ignore=tests/edge",
               "--ignore=tests/cluster"]),
    # servers of their own: a private RabbitMQ node, private redis-servers,
    # a Redis Cluster, a three-node RabbitMQ cluster
    ("fault+cluster", ["tests/fault", "tests/cluster"]),
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
