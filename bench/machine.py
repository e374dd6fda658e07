"""The machine the bench runs on: CPU time of processes and of the whole
machine, and what the table's header says about hardware and software."""
import importlib.metadata as md
import os
import platform
import subprocess
import time

from harness.process import ROOT
from harness.rabbit import broker_version

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process, or None once it is gone."""
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def waiting_seconds(pid):
    """Seconds the threads of a process have spent runnable but waiting for
    a core (the second field of each thread's schedstat), or None once it
    is gone."""
    total = 0
    try:
        for task in os.listdir("/proc/{}/task".format(pid)):
            try:
                with open("/proc/{}/task/{}/schedstat".format(pid, task)) as handle:
                    total += int(handle.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass  # a thread that ended meanwhile
    except OSError:
        return None
    return total / 1e9


def busy_seconds():
    """CPU seconds spent busy by the whole machine (all cores) so far."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_quiet(limit=0.15, patience=20.0):
    """Wait until the whole machine is nearly idle, below ``limit`` of a core
    busy over one second (what the previous phase or a publish left behind,
    a RabbitMQ flushing its store, say), for ``patience`` seconds at most.
    Returns the share of a core busy in the last second."""
    deadline = time.monotonic() + patience
    while True:
        before = busy_seconds()
        time.sleep(1.0)
        share = busy_seconds() - before
        if share < limit or time.monotonic() > deadline:
            return share


def rabbitmq_pid():
    """The RabbitMQ server's beam process (not a rabbitmqctl one)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/cmdline".format(entry), "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"beam.smp") and b"rabbit" in cmdline \
                and b"boot" in cmdline:
            return int(entry)
    return None


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            mem_gb = int(handle.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem_gb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": "{:.1f} GiB".format(mem_gb),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


def tree_of(commit, folder):
    """A copy of ``commit``'s files (git archive) in ``folder``/``commit``,
    to run its services beside this tree's."""
    tree = folder / commit
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def code_version():
    """The commit measured, and whether the services differ from it."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "services", "config.yml"],
            capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "code: unknown (no git)"
    return "code: commit {}{}".format(
        head or "?", " + {} uncommitted file(s) in services/ or config.yml".format(
            len(changed)) if changed else "")


def versions(env):
    parts = []
    for package in ("nameko", "eventlet", "kombu", "redis"):
        try:
            parts.append("{} {}".format(package, md.version(package)))
        except md.PackageNotFoundError:
            pass
    try:
        parts.append("RabbitMQ {}".format(broker_version(env.amqp_uri)))
    except Exception:
        pass
    store = env.redis()
    try:
        parts.append("Redis {}{}".format(
            store.info("server")["redis_version"],
            " (db 15 of the local server)" if env.redis_server is None
            else " (private, AOF everysec)"))
    finally:
        store.close()
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        parts.append(out.stdout.split(" [")[0].strip() or "wrk")
    except OSError:
        pass
    return " | ".join(parts)
