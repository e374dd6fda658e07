"""What every phase of the bench shares: the table's rows and notes, the
votes each phase had answered 202, wrk runs with CPU shares, and waiting
until Redis counts exactly what was accepted."""
import os
import time

from bench import wrk
from bench.machine import busy_seconds, cpu_seconds, rabbitmq_pid
from services import contracts


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return "{:,.{}f}".format(value, digits)


def cpu_note(cpu):
    short = {"gateway": "gw", "votes": "votes", "bare": "bare", "redis": "redis",
             "rabbitmq": "mq", "wrk": "wrk", "bench": "client",
             "streams": "sse-clients", "other": "OTHER"}
    parts = ["{} {:.0f}%".format(short.get(name, name), share * 100)
             for name, share in cpu.items() if share is not None and share >= 0.005]
    return "cpu " + " ".join(parts) if parts else ""


class CpuMeter:
    """The share of a core each process used since it was made: ``pids``
    {name: pid}, the bench process itself as "bench", the rest of the
    machine as "other"."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.self_before = os.times()
        self.busy_before = busy_seconds()
        self.start = time.perf_counter()

    def shares(self):
        elapsed = time.perf_counter() - self.start
        cpu = {}
        for name, pid in self.pids.items():
            now = cpu_seconds(pid)
            if self.before[name] is not None and now is not None:
                cpu[name] = (now - self.before[name]) / elapsed
        times = os.times()
        cpu["bench"] = (times.user + times.system - self.self_before.user
                        - self.self_before.system) / elapsed
        cpu["other"] = max(0.0, (busy_seconds() - self.busy_before) / elapsed
                           - sum(cpu.values()))
        return cpu


class Bench:
    """The state of one run, handed to each phase in turn."""

    def __init__(self, env, profile, wrk_path):
        self.env = env
        self.p = profile
        self.rows = []      # (what, figure, key, how, detail)
        self.notes = []
        self.accepted = {}  # phase -> votes answered 202
        self.problems = []  # correctness problems
        self.wrk = wrk_path
        self.rabbit = rabbitmq_pid()
        self.figures = {}
        self.series = {}  # name -> [figure of each run] (the targets table)
        self.max_other = 0.0
        self.started = time.perf_counter()

    def row(self, what, figure, key="", how="", detail=""):
        """One line of the table: the figure, the ratio or bound next to
        it, what produced it, and a second line of detail."""
        self.rows.append((what, figure, key, how, detail))
        print("[{:4.0f} s] {}: {}{}".format(
            time.perf_counter() - self.started, what, figure,
            " ({})".format(key) if key else ""), flush=True)

    def runs(self, name, value):
        """One run's figure of a measurement repeated ``rounds`` times."""
        self.series.setdefault(name, []).append(value)

    def watch(self, *names):
        pids = {}
        for name in names:
            service = self.env.services.get(name)
            if service is not None and service.alive:
                pids[name] = service.pid
        if self.env.redis_pid:
            pids["redis"] = self.env.redis_pid
        if self.rabbit:
            pids["rabbitmq"] = self.rabbit
        return pids

    def cpu_meter(self, *names, **pids):
        """A CpuMeter of the services named (with Redis and RabbitMQ) and
        of the other processes given as name=pid."""
        return CpuMeter(dict(self.watch(*names), **pids))

    def host_port(self, name):
        return "127.0.0.1", self.env.services[name].port

    def counted(self, keys):
        """upvote + downvote summed over the given post ids."""
        store = self.env.redis()
        total = 0
        try:
            for start in range(0, len(keys), 1000):
                pipe = store.pipeline(transaction=False)
                for post in keys[start:start + 1000]:
                    pipe.hmget(contracts.post_key(post), "upvote", "downvote")
                for up, down in pipe.execute():
                    total += int(up or 0) + int(down or 0)
        finally:
            store.close()
        return total

    def settle(self, phase, posts, expected, timeout=None, refused=0):
        """Waits until the phase's posts hold exactly its accepted votes;
        returns the seconds waited. ``refused``: votes answered 5xx."""
        timeout = timeout or self.p["settle_timeout"]
        start = time.perf_counter()
        while True:
            got = self.counted(posts)
            if got == expected:
                return time.perf_counter() - start
            if got > expected:
                self.problems.append("{}: {} votes counted, only {} accepted{}".format(
                    phase, got, expected,
                    " ({} of the {} votes answered 5xx were counted: a 503 "
                    "did not mean 'not recorded')".format(got - expected, refused)
                    if refused and got - expected <= refused else ""))
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                self.problems.append("{}: {} of {} accepted votes counted after {:.0f} s".format(
                    phase, got, expected, timeout))
                return time.perf_counter() - start
            time.sleep(0.05)

    def check_wrk(self, phase, result, ok_status):
        if result.unanswered:
            self.problems.append("{}: {} requests sent by wrk never answered".format(
                phase, result.unanswered))
        bad = {code: n for code, n in result.statuses.items()
               if code not in (ok_status, 405, 404)}
        if bad:
            self.notes.append("{}: unexpected answers {}".format(phase, bad))
        if result.socket_errors:
            self.notes.append("{}: {} wrk socket errors".format(
                phase, result.socket_errors))

    def run_wrk(self, target, mode, connections, prefix, window=None, posts=None, batch=100,
                watch=None, script_env=None):
        """``watch``: {name: pid} for the cpu line, by default the
        services' (and Redis's and RabbitMQ's)."""
        self.env.sample_memory()
        result = wrk.run(
            self.wrk, self.env.url(target), mode, connections,
            window or self.p["window"], self.p["tail"], prefix,
            posts or self.p["posts"], batch=batch,
            watch=watch or self.watch("gateway", "votes", "bare"), tmp=self.env.tmp,
            script_env=script_env)
        self.env.sample_memory()
        self.note_other(result.cpu)
        return result

    def note_other(self, cpu):
        self.max_other = max(self.max_other, cpu.get("other", 0))

    def posts(self, prefix, count=None):
        return ["{}{}".format(prefix, i) for i in range(count or self.p["posts"])]

    def vote_run(self, phase, connections, prefix, window=None, posts=None, held=0,
                 target="gateway", watch=None, mode="vote", script_env=None):
        """wrk single votes on the gateway (or ``target``; on ``posts``
        posts, by default the profile's, which held ``held`` votes before);
        returns the result once every accepted vote is counted."""
        result = self.run_wrk(target, mode, connections, prefix, window, posts,
                              watch=watch, script_env=script_env)
        self.check_wrk(phase, result, 202)
        self.accepted[phase] = result.count(202)
        refused = sum(n for code, n in result.statuses.items() if code >= 500)
        result.settle = self.settle(phase, self.posts(prefix, posts),
                                    held + result.count(202), refused=refused)
        return result
