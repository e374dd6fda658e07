"""One wrk run with exact accounting (see wrk.lua).

wrk stops on its own clock and abandons the requests in flight, so a vote
could be counted without its 202 ever being seen. Instead the run has a
measuring window, after which a stop file makes wrk send only harmless
requests (DELETE /vote, answered 405) until every real request has its
answer (at most ``max_tail`` s, beyond the gateway's publish timeout); then
SIGINT ends it. Every vote sent is then answered, and the figure is the
answers of the window's requests over the window's length.
"""
import os
import re
import resource
import signal
import subprocess
import time
import uuid

from bench.machine import busy_seconds, cpu_seconds, waiting_seconds

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk.lua")


class WrkResult:

    def __init__(self, window, bench, text, cpu, command, waiting=None):
        self.window = window
        self.waiting = waiting or {}  # name: share of the window runnable, not running
        self.sent = bench.get("sent", 0)
        self.responses = bench.get("responses", 0)
        self.statuses = {int(key[1:]): value for key, value in bench.items()
                         if re.fullmatch(r"s\d+", key)}
        self.p50_ms = bench.get("p50us", 0) / 1000
        self.p99_ms = bench.get("p99us", 0) / 1000
        self.cpu = cpu
        self.command = command
        match = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        self.socket_errors = sum(map(int, match.groups())) if match else 0

    @property
    def answered(self):
        """Answers to real (not harmless) requests."""
        return self.responses - self.statuses.get(405, 0)

    @property
    def unanswered(self):
        """Real requests sent whose answer wrk never read."""
        return self.sent - self.answered

    def count(self, status):
        return self.statuses.get(status, 0)

    def rate(self, status):
        return self.count(status) / self.window


def run(wrk, url, mode, connections, window, tail, prefix, posts, batch=100,
        watch=None, tmp="/tmp", max_tail=10.0, script_env=None):
    """``watch``: {name: pid} whose CPU use over the window is reported;
    ``script_env``: more BENCH_* settings for wrk.lua."""
    stop_file = os.path.join(tmp, "wrk-stop-" + uuid.uuid4().hex)
    env = dict(os.environ, BENCH_MODE=mode, BENCH_STOP=stop_file,
               BENCH_PREFIX=prefix, BENCH_POSTS=str(posts),
               BENCH_BATCH=str(batch), **(script_env or {}))
    # -d is only a safety net: the bench ends the run with SIGINT
    command = [wrk, "-t", "1", "-c", str(connections),
               "-d", "{}s".format(int(window + tail + 60)), "--timeout", "30s",
               "-s", SCRIPT, url]
    watch = dict(watch or {})
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    waited_before = {name: waiting_seconds(pid) for name, pid in watch.items()}
    busy_before = busy_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        time.sleep(max(0.0, start + window - time.perf_counter()))
        # the window closes: no new vote from here on
        open(stop_file, "w").close()
        elapsed = time.perf_counter() - start
        after = {name: cpu_seconds(pid) for name, pid in watch.items()}
        waited_after = {name: waiting_seconds(pid) for name, pid in watch.items()}
        wrk_cpu = cpu_seconds(process.pid)
        busy = busy_seconds() - busy_before
        # the tail: until every request of the window is answered (the
        # script says so), at least ``tail`` and at most ``max_tail`` s
        drained = stop_file + ".drained.0"
        tail_end = time.perf_counter() + max_tail
        time.sleep(tail)
        while not os.path.exists(drained) and time.perf_counter() < tail_end:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for path in (stop_file, stop_file + ".drained.0"):
            try:
                os.unlink(path)
            except OSError:
                pass
    text = output.decode(errors="replace")
    if wrk_cpu is None:  # gone already: take it from the reaped children
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = (children.ru_utime + children.ru_stime
                   - children_before.ru_utime - children_before.ru_stime)
    cpu = {name: (after[name] - before[name]) / elapsed
           for name in watch if before[name] is not None and after[name] is not None}
    waiting = {name: (waited_after[name] - waited_before[name]) / elapsed for name in watch
               if waited_before[name] is not None and waited_after[name] is not None}
    cpu["wrk"] = wrk_cpu / elapsed
    # everything else on the machine: other people's work is noise here
    cpu["other"] = max(0.0, busy / elapsed - sum(cpu.values()))
    bench = {}
    for line in text.splitlines():
        if line.startswith("BENCH "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                bench[key] = int(value)
    if not bench:
        raise RuntimeError("wrk printed no BENCH line:\n" + text)
    shown = "wrk -t1 -c{} {:g}s {} {}".format(
        connections, window, {"vote": "GET /vote", "voter": "GET /vote",
                              "read": "GET /vote-counts", "batch": "POST /votes",
                              "page": "GET " + prefix}[mode],
        url.split("/")[2])
    return WrkResult(elapsed, bench, text, cpu, shown, waiting)
