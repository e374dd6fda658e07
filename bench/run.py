"""The bench's phases and its table. Entry point: ``python -m bench``."""
import argparse
import os
import signal
import sys
import time
import traceback

from bench import client, wrk
from bench.env import (
    DEAD_LETTER_QUEUE,
    ROOT,
    Environment,
    SetupError,
    busy_seconds,
    cpu_seconds,
    ensure_wrk,
    machine_info,
    rabbitmq_pid,
)
from services import contracts

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
        "latency_window": 10.0,
        "probe_rate": 100,      # probes per second in the latency phase
        "memory_posts": 20_000,
        "memory_voter_votes": 20_000,
        "memory_voter_posts": 20,
        "memory_keys": 10_000,
        "settle_timeout": 120.0,
    },
    "quick": {
        "window": 2.0,
        "tail": 0.2,
        "warmup": 0.5,
        "levels": (16, 64),
        "batch_connections": 16,
        "batch_size": 100,
        "posts": 200,
        "drain_votes": 5_000,
        "drain_fill_max": 3.0,
        "latency_window": 2.0,
        "probe_rate": 100,
        "memory_posts": 2_000,
        "memory_voter_votes": 2_000,
        "memory_voter_posts": 4,
        "memory_keys": 1_000,
        "settle_timeout": 60.0,
    },
}


class Interrupted(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted("signal {}".format(signum))


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return "{:,.{}f}".format(value, digits)


def cpu_note(cpu):
    short = {"gateway": "gw", "votes": "votes", "bare": "bare", "redis": "redis",
             "rabbitmq": "mq", "wrk": "wrk", "bench": "client", "other": "OTHER"}
    parts = ["{} {:.0f}%".format(short.get(name, name), share * 100)
             for name, share in cpu.items() if share is not None and share >= 0.005]
    return "cpu " + " ".join(parts) if parts else ""


class Bench:

    def __init__(self, env, profile, quick):
        self.env = env
        self.p = profile
        self.quick = quick
        self.rows = []      # (what, figure, key, how, detail)
        self.notes = []
        self.accepted = {}  # phase -> votes answered 202
        self.problems = []  # correctness problems
        self.wrk = None
        self.rabbit = rabbitmq_pid()
        self.figures = {}
        self.max_other = 0.0
        self.started = time.perf_counter()

    # -- helpers

    def row(self, what, figure, key="", how="", detail=""):
        """One line of the table: the figure, the ratio or bound next to
        it, what produced it, and a second line of detail."""
        self.rows.append((what, figure, key, how, detail))
        print("[{:4.0f} s] {}: {}{}".format(
            time.perf_counter() - self.started, what, figure,
            " ({})".format(key) if key else ""), flush=True)

    def watch(self, *names):
        pids = {}
        for name in names:
            service = self.env.services.get(name)
            if service is not None and service.alive():
                pids[name] = service.pid
        if self.env.redis_pid:
            pids["redis"] = self.env.redis_pid
        if self.rabbit:
            pids["rabbitmq"] = self.rabbit
        return pids

    def host_port(self, name):
        return "127.0.0.1", self.env.ports[name]

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

    def run_wrk(self, target, mode, connections, prefix, window=None, posts=None, batch=100):
        self.env.sample_memory()
        result = wrk.run(
            self.wrk, self.env.url(target), mode, connections,
            window or self.p["window"], self.p["tail"], prefix,
            posts or self.p["posts"], batch=batch,
            watch=self.watch("gateway", "votes", "bare"), tmp=self.env.tmp)
        self.env.sample_memory()
        self.note_other(result.cpu)
        return result

    def note_other(self, cpu):
        self.max_other = max(self.max_other, cpu.get("other", 0))

    def posts(self, prefix, count=None):
        return ["{}{}".format(prefix, i) for i in range(count or self.p["posts"])]

    def vote_run(self, phase, connections, prefix, window=None):
        """wrk single votes on the gateway; returns the result once every
        accepted vote is counted."""
        result = self.run_wrk("gateway", "vote", connections, prefix, window)
        self.check_wrk(phase, result, 202)
        self.accepted[phase] = result.count(202)
        refused = sum(n for code, n in result.statuses.items() if code >= 500)
        result.settle = self.settle(phase, self.posts(prefix), result.count(202),
                                    refused=refused)
        return result

    # -- phases

    def warm_up(self):
        window = self.p["warmup"]
        self.run_wrk("bare", "vote", 16, "w", window)
        self.vote_run("warm-up", 16, "w-", window)
        self.run_wrk("bare", "read", 16, "w-", window)
        self.run_wrk("gateway", "read", 16, "w-", window)

    def single_votes(self):
        best = 0
        for connections in self.p["levels"]:
            bare = self.run_wrk("bare", "vote", connections, "v{}-".format(connections))
            votes = self.vote_run("single c{}".format(connections), connections,
                                  "v{}-".format(connections))
            rate, bare_rate = votes.rate(202), bare.rate(202)
            best = max(best, rate)
            self.figures["votes_c{}".format(connections)] = rate
            self.figures["bare_c{}".format(connections)] = bare_rate
            self.bare_row("/vote", connections, bare, bare_rate)
            self.row("single votes GET /vote, c={}".format(connections),
                     "{} votes/s".format(fmt(rate)),
                     "votes/bare {:.2f}".format(rate / bare_rate if bare_rate else 0),
                     votes.command + " (gateway)",
                     "p50 {:.1f} ms p99 {:.1f} ms; {}; all counted {:.1f} s "
                     "after the run".format(votes.p50_ms, votes.p99_ms,
                                            cpu_note(votes.cpu), votes.settle))
        self.figures["max_single"] = best
        return best

    def bare_row(self, path, connections, bare, bare_rate):
        self.row("bare @http GET {}, c={}".format(path, connections),
                 "{} req/s".format(fmt(bare_rate)), "",
                 bare.command + " (bare)",
                 "p50 {:.1f} ms p99 {:.1f} ms; {}".format(
                     bare.p50_ms, bare.p99_ms, cpu_note(bare.cpu)))

    def reads(self):
        # posts of their own, one vote each, so that every read finds its post
        prefix = "r-"
        posts = self.posts(prefix)
        host, port = self.host_port("gateway")
        accepted, failures, _ = client.post_batches(host, port, [
            client.batch_body([{"postId": post, "score": 1} for post in posts])])
        self.accepted["reads seed"] = accepted
        if failures or accepted != len(posts):
            raise RuntimeError("reads: could not seed the posts: {}".format(failures))
        self.settle("reads seed", posts, accepted)
        for connections in self.p["levels"]:
            bare = self.run_wrk("bare", "read", connections, prefix)
            reads = self.run_wrk("gateway", "read", connections, prefix)
            self.check_wrk("reads c{}".format(connections), reads, 200)
            misses = reads.count(404)
            rate, bare_rate = reads.rate(200), bare.rate(200)
            self.bare_row("/vote-counts", connections, bare, bare_rate)
            self.row("reads GET /vote-counts, c={}".format(connections),
                     "{} reads/s".format(fmt(rate)),
                     "reads/bare {:.2f}".format(rate / bare_rate if bare_rate else 0),
                     reads.command + " (gateway)",
                     "p50 {:.1f} ms p99 {:.1f} ms; {}; {} posts{}".format(
                         reads.p50_ms, reads.p99_ms, cpu_note(reads.cpu),
                         self.p["posts"],
                         "; {} answered 404".format(misses) if misses else ""))
            if misses:
                self.problems.append("reads c{}: {} reads of existing posts "
                                     "answered 404".format(connections, misses))

    def batch(self):
        size = self.p["batch_size"]
        connections = self.p["batch_connections"]
        phase = "batch"
        posts = self.posts("b-")
        result = self.run_wrk("gateway", "batch", connections, "b-", batch=size)
        at_end = self.counted(posts)
        self.check_wrk(phase, result, 202)
        accepted = result.count(202) * size
        self.accepted[phase] = accepted
        refused = sum(n for code, n in result.statuses.items() if code >= 500)
        settle = self.settle(phase, posts, accepted, refused=refused * size)
        rate = accepted / result.window
        self.figures["batch"] = rate
        self.row("batch votes POST /votes x{}, c={}".format(size, connections),
                 "{} votes/s".format(fmt(rate)),
                 "{} req/s".format(fmt(result.rate(202))),
                 result.command + " (gateway)",
                 "p50 {:.1f} ms p99 {:.1f} ms; {}; backlog of {} votes after "
                 "the run, counted {:.1f} s later".format(
                     result.p50_ms, result.p99_ms, cpu_note(result.cpu),
                     fmt(accepted - at_end), settle))

    def drain(self, kind):
        """Stop the votes service, queue votes through the gateway (as
        POST /votes batches, or as single votes), start one votes process
        and time how fast it counts them."""
        phase = "drain " + kind
        total = self.p["drain_votes"]
        size = self.p["batch_size"]
        votes_service = self.env.services["votes"]
        votes_service.stop()
        _, consumers = self.env.queue_depth()
        if consumers:
            self.problems.append("{}: the votes queue still has a consumer".format(phase))
        host, port = self.host_port("gateway")
        if kind == "batches":
            posts = self.posts("db-", 100)
            bodies = []
            for start in range(0, total, size):
                bodies.append(client.batch_body([
                    {"postId": posts[k % len(posts)], "score": -1 if k % 4 == 3 else 1}
                    for k in range(start, min(total, start + size))]))
            accepted, failures, fill_seconds = client.post_batches(
                host, port, bodies, concurrency=16)
            if failures:
                self.notes.append("{} fill: failed requests {}".format(phase, failures))
            how = "stop votes; POST /votes x{} c=16 ({:.1f} s); start votes".format(
                size, fill_seconds)
        else:
            posts = self.posts("ds-")
            # about ``total`` votes at the rate measured before
            window = min(self.p["drain_fill_max"],
                         max(1.0, total / max(1.0, self.figures["max_single"])))
            result = self.run_wrk("gateway", "vote", 64, "ds-", window)
            self.check_wrk(phase, result, 202)
            accepted = result.count(202)
            how = "stop votes; wrk -c64 GET /vote {:.0f} s; start votes".format(
                result.window)
        self.accepted[phase] = accepted
        events, _ = self.env.queue_depth()
        self.env.sample_memory()

        start = time.perf_counter()
        self.env.start_service("votes", "services.votes.service")
        pid = votes_service.pid
        cpu_before = None
        first = first_count = None
        done = None
        deadline = start + self.p["settle_timeout"]
        while time.perf_counter() < deadline:
            if cpu_before is None:
                cpu_before = cpu_seconds(pid)
            got = self.counted(posts)
            now = time.perf_counter()
            if got and first is None:
                first, first_count = now, got
            if got >= accepted:
                done = now
                if got > accepted:
                    self.problems.append("{}: {} counted, {} accepted".format(
                        phase, got, accepted))
                break
            votes_service.sample_memory()
            time.sleep(0.02)
        votes_service.sample_memory()
        cpu = cpu_seconds(pid)
        what = "drain {}: one votes process".format(
            "of batches" if kind == "batches" else "of single votes")
        if done is None:
            self.problems.append("{}: not all {} votes counted in {:.0f} s".format(
                phase, accepted, self.p["settle_timeout"]))
            self.row(what, "n/a", "timed out", how)
            return
        # the votes counted between the first poll that saw any and the
        # last; if one poll saw them all, from the process start
        if done - first > 0.2:
            rate = (accepted - first_count) / (done - first)
            basis = "from the first vote counted"
        else:
            rate = accepted / (done - start)
            basis = "from process start (too few votes to leave the start-up out)"
        self.figures[phase] = rate
        cpu_share = ((cpu - cpu_before) / (done - start)
                     if cpu is not None and cpu_before is not None else 0)
        self.row(what, "{} votes/s".format(fmt(rate)),
                 "{} in {:.1f} s".format(fmt(accepted), done - start),
                 how + "; poll Redis every 20 ms",
                 "{}; {} votes/s from process start; {} events of ~{} votes "
                 "queued; votes process cpu {:.0f}%".format(
                     basis, fmt(accepted / (done - start)), fmt(events),
                     fmt(accepted / events) if events else "?", cpu_share * 100))

    def aof_rewrites(self):
        store = self.env.redis()
        try:
            return int(store.info("persistence").get("aof_rewrites", 0))
        finally:
            store.close()

    def redis_stalls(self):
        """Redis's own record of stalls of 10 ms or more (LATENCY LATEST)."""
        if self.env.redis_shared:
            return
        store = self.env.redis()
        try:
            events = store.execute_command("LATENCY", "LATEST")
            stats = store.info("persistence")
            slow = store.slowlog_get(128)
        finally:
            store.close()
        parts = ["{} max {} ms".format(event[0], event[3]) for event in events]
        commands = {}
        for entry in slow:
            command = entry["command"]
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            words = command.split(" ", 3)
            name = words[0].upper()
            if name in ("EVALSHA", "EVAL") and len(words) > 2 and words[2].isdigit():
                # the apply script: 2 keys + 2 per vote
                name = "{} of {} votes".format(name, (int(words[2]) - 2) // 2)
            count, worst = commands.get(name, (0, 0))
            commands[name] = (count + 1, max(worst, entry["duration"] / 1000))
        self.notes.append(
            "Redis stalls >= 10 ms (LATENCY LATEST): {}; slow commands: {}; "
            "{} AOF rewrites in all".format(
                ", ".join(parts) if parts else "none",
                ", ".join("{} x{} (max {:.0f} ms)".format(name, count, worst)
                          for name, (count, worst) in commands.items()) or "none",
                stats.get("aof_rewrites", "?")))

    def latency(self):
        rate = self.figures["max_single"] / 2
        host, port = self.host_port("gateway")
        duration = self.p["latency_window"]
        self_before = os.times()
        watched = self.watch("gateway", "votes")
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        busy_before = busy_seconds()
        rewrites_before = self.aof_rewrites()
        start = time.perf_counter()
        stats = client.latency(host, port, self.env.redis_uri, rate, duration,
                               probe_rate=self.p["probe_rate"])
        elapsed = time.perf_counter() - start
        rewrites = self.aof_rewrites() - rewrites_before
        self_after = os.times()
        self.env.sample_memory()
        cpu = {name: (cpu_seconds(pid) - before[name]) / elapsed
               for name, pid in watched.items()
               if before[name] is not None and cpu_seconds(pid) is not None}
        cpu["bench"] = (self_after.user + self_after.system
                        - self_before.user - self_before.system) / elapsed
        cpu["other"] = max(0.0, (busy_seconds() - busy_before) / elapsed
                           - sum(cpu.values()))
        self.note_other(cpu)
        self.accepted["latency"] = stats["accepted"]
        background = ["lt-{}".format(i) for i in range(1000)]
        probes = stats["probes"]
        refused = sum(n for code, n in stats["failed"].items()
                      if isinstance(code, int) and code >= 500)
        self.settle("latency", background + probes, stats["accepted"], refused=refused)
        if stats["lost"]:
            self.problems.append("latency: {} probes never became visible".format(
                len(stats["lost"])))
        if stats["failed"]:
            self.notes.append("latency: failed requests {}".format(stats["failed"]))
        # the API agrees with what was polled: each probe counts one upvote
        paths = ["/vote-counts?postId={}".format(post) for post in probes[:200]]
        for _attempt in range(5):  # a 503 says nothing about the counts
            answers = client.get_all(host, port, paths)
            if all(status != 503 for status, _ in answers):
                break
            time.sleep(0.5)
        wrong = [a for a in answers if a[0] != 200 or a[1].get("upvote") != 1]
        if wrong:
            self.problems.append("latency: {} probes wrong in /vote-counts: {}".format(
                len(wrong), wrong[:3]))
        visible = stats["visible_ms"]
        achieved = stats["sent"] / stats["send_seconds"]
        p50, p99 = client.percentile(visible, 50), client.percentile(visible, 99)
        self.figures["latency_p99"] = p99
        self.row("202 -> visible in /vote-counts, p50 / p99",
                 "{:.1f} / {:.1f} ms".format(p50, p99),
                 "at {} votes/s".format(fmt(achieved)),
                 "asyncio open loop GET /vote {:g} s at max/2; probes polled "
                 "in Redis".format(duration),
                 "{} probes (own post each), max {:.1f} ms; target {} votes/s; "
                 "request -> 202 p50 {:.1f} p99 {:.1f} ms; {} connections; "
                 "poller gaps up to {:.0f} ms; {} AOF rewrites; {}".format(
                     len(visible), max(visible) if visible else float("nan"),
                     fmt(rate), client.percentile(stats["ack_ms"], 50),
                     client.percentile(stats["ack_ms"], 99), stats["connections"],
                     stats["max_poll_gap_ms"], rewrites, cpu_note(cpu)))
        if stats["late_sends"]:
            self.notes.append(
                "latency: {} of {} votes sent more than 5 ms after their time "
                "(max {:.1f} ms): the client shares the 2 cores".format(
                    stats["late_sends"], stats["sent"], stats["max_send_lag_ms"]))

    @staticmethod
    def data_bytes(store):
        """Memory of the data set: what Redis allocated, less the client
        and AOF buffers, which come and go with the traffic."""
        stats = store.memory_stats()
        return (int(stats["total.allocated"]) - int(stats.get("clients.normal", 0))
                - int(stats.get("clients.slaves", 0)) - int(stats.get("aof.buffer", 0)))

    def memory(self):
        store = self.env.redis()
        host, port = self.host_port("gateway")
        try:
            n = self.p["memory_posts"]
            posts = ["m-{}".format(i) for i in range(n)]
            before = self.data_bytes(store)
            bodies = [client.batch_body([{"postId": post, "score": 1}
                                         for post in posts[i:i + 1000]])
                      for i in range(0, n, 1000)]
            accepted, failures, _ = client.post_batches(host, port, bodies, 4)
            self.accepted["memory posts"] = accepted
            self.settle("memory posts", posts, accepted)
            after = self.data_bytes(store)
            per_post = (after - before) / n
            self.row("Redis memory per post", "{} B".format(fmt(per_post)), "",
                     "{} new posts via POST /votes x1000; MEMORY STATS "
                     "delta".format(fmt(n)),
                     "post hash + votes:top member + its share of exactly-once marks")

            m = self.p["memory_voter_votes"]
            targets = posts[:self.p["memory_voter_posts"]]
            votes = [{"postId": targets[k % len(targets)], "score": 1,
                      "voterId": "u{}".format(k)} for k in range(m)]
            before = self.data_bytes(store)
            bodies = [client.batch_body(votes[i:i + 1000]) for i in range(0, m, 1000)]
            accepted, failures2, _ = client.post_batches(host, port, bodies, 4)
            self.accepted["memory voters"] = accepted
            self.settle("memory voters", posts, self.accepted["memory posts"] + accepted)
            after = self.data_bytes(store)
            per_vote = (after - before) / m
            self.row("Redis memory per voter vote", "{} B".format(fmt(per_vote)), "",
                     "{} votes with voterId via POST /votes x1000; MEMORY "
                     "STATS delta".format(fmt(m)),
                     "{} existing posts, {} distinct voters each; voters hash "
                     "encoding {}, votes:top {}".format(
                         len(targets), fmt(m // len(targets)),
                         store.execute_command("OBJECT", "ENCODING",
                                               contracts.voters_key(targets[0])),
                         store.execute_command("OBJECT", "ENCODING", contracts.KEY_TOP)))
            # the same 1-vote requests without and with a key: the
            # difference is what the keys' marks cost
            k = self.p["memory_keys"]
            body = client.batch_body([{"postId": targets[0], "score": 1}])
            deltas = []
            for keys in (None, ["bench-key-{}".format(i) for i in range(k)]):
                before = self.data_bytes(store)
                accepted, failed, _ = client.post_batches(
                    host, port, [body] * k, 16, keys=keys)
                self.accepted["memory keys"] = (
                    self.accepted.get("memory keys", 0) + accepted)
                self.settle("memory keys", posts, self.accepted["memory posts"]
                            + self.accepted["memory voters"]
                            + self.accepted["memory keys"])
                deltas.append(self.data_bytes(store) - before)
                if failed:
                    self.notes.append("memory keys: failed requests {}".format(failed))
            self.figures["key_bytes"] = (deltas[1] - deltas[0]) / k
            self.row("Redis memory per Idempotency-Key", "{} B".format(
                         fmt(self.figures["key_bytes"])), "",
                     "{} 1-vote POST /votes with a key each, less the same "
                     "without; MEMORY STATS delta".format(fmt(k)),
                     "{} with its fingerprint, kept for IDEMPOTENCY_TTL".format(
                         contracts.once_key("<keyId>")))
            for failed in (failures, failures2):
                if failed:
                    self.notes.append("memory: failed requests {}".format(failed))

            marks, mark_bytes, cursor = 0, None, 0
            while True:
                cursor, keys = store.scan(cursor, match=contracts.APPLIED_KEY_PATTERN, count=1000)
                marks += len(keys)
                if keys and mark_bytes is None:
                    mark_bytes = store.memory_usage(keys[0])
                if not cursor:
                    break
            self.figures["marks"] = (marks, mark_bytes)
            info = store.info("memory")
            self.notes.append(
                "Redis at the end: used_memory {} MB, {} exactly-once marks "
                "(votes:applied:*, ~{} B each by MEMORY USAGE, kept for "
                "APPLIED_MARK_TTL)".format(
                    fmt(int(info["used_memory"]) / 1e6, 1), fmt(marks), mark_bytes))
        finally:
            store.close()

    def rss(self):
        self.env.sample_memory()
        for name in ("gateway", "votes", "bare"):
            service = self.env.services.get(name)
            if service is None:
                continue
            self.row("peak RSS, {}{}".format(
                         name, " (reference)" if name == "bare" else ""),
                     "{} MB".format(fmt(service.peak_kb / 1024, 1)), "",
                     "VmHWM in /proc/<pid>/status, sampled around every phase{}".format(
                         " (max of its 2 processes)" if name == "votes" else ""))

    def correctness(self):
        """The votes: every 202 counted once, nothing more."""
        store = self.env.redis()
        total = posts = 0
        cursor = 0
        try:
            while True:
                cursor, keys = store.scan(cursor, match=contracts.POST_KEY_PATTERN, count=1000)
                if keys:
                    pipe = store.pipeline(transaction=False)
                    for key in keys:
                        pipe.hmget(key, "upvote", "downvote")
                    for up, down in pipe.execute():
                        total += int(up or 0) + int(down or 0)
                    posts += len(keys)
                if not cursor:
                    break
        finally:
            store.close()
        expected = sum(self.accepted.values())
        dead, _ = self.env.queue_depth(DEAD_LETTER_QUEUE)
        if total != expected:
            self.problems.append("Redis counts {} votes, {} were answered 202".format(
                total, expected))
        if dead:
            self.problems.append("{} messages in the dead-letter queue".format(dead))
        ok = not self.problems
        if self.max_other > 0.15:
            self.notes.insert(0, "other processes on this machine used up to {:.0f}% "
                              "of a core during a measurement (OTHER in the cpu "
                              "lines): the figures are noisy".format(self.max_other * 100))
        self.row("correctness: votes counted == 202s",
                 "PASS" if ok else "FAIL",
                 "{} == {}".format(fmt(total), fmt(expected)) if total == expected
                 else "{} != {}".format(fmt(total), fmt(expected)),
                 "each phase settled exactly; then SCAN votes:post:*",
                 "{} counted in {} posts, {} answered 202 over {} phases; "
                 "{} dead-lettered{}".format(
                     fmt(total), fmt(posts), fmt(expected), len(self.accepted),
                     dead or 0, "" if ok else "; " + "; ".join(self.problems)))
        return ok


def render(info, versions, rows, notes, elapsed, mode):
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
    lines.append("bench took {:.0f} s; load average {} at the end".format(
        elapsed, "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())))
    return "\n".join(lines)


def code_version():
    """The commit measured, and whether the services differ from it."""
    import subprocess
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
    import importlib.metadata as md
    parts = []
    for package in ("nameko", "eventlet", "kombu", "redis"):
        try:
            parts.append("{} {}".format(package, md.version(package)))
        except md.PackageNotFoundError:
            pass
    try:
        parts.append("RabbitMQ {}".format(env.rabbitmq_version()))
    except Exception:
        pass
    store = env.redis()
    try:
        parts.append("Redis {}{}".format(
            store.info("server")["redis_version"],
            " (db 15 of the local server)" if env.redis_shared
            else " (private, AOF everysec)"))
    finally:
        store.close()
    try:
        import subprocess
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        parts.append(out.stdout.split(" [")[0].strip() or "wrk")
    except OSError:
        pass
    return " | ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: short phases, small counts")
    parser.add_argument("--config", default=os.path.join(ROOT, "config.yml"),
                        help="nameko config for the services (default config.yml)")
    parser.add_argument("--out", help="where to write the table too (default "
                        "bench/results/latest.txt, latest-quick.txt with --quick)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = args.out or (RESULTS_QUICK if args.quick else RESULTS)
    profile = PROFILES[mode]
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
        env.start_service("bare", "bench.bare", http=True)
        env.start_service("votes", "services.votes.service")
        env.start_service("gateway", "services.gateway.service", http=True)
        env.wait_http("bare", "/vote", {202})
        # a 404 for an unknown post means the RPC path to votes works too
        env.wait_http("gateway", "/vote-counts?postId=bench-ready", {404}, timeout=60)
        print("started: vhost {}, {}, gateway :{}, bare :{}".format(
            env.vhost, env.redis_uri, env.ports["gateway"], env.ports["bare"]),
            flush=True)
        soft = versions(env)
        bench = Bench(env, profile, args.quick)
        bench.wrk = wrk_path
        bench.warm_up()
        bench.single_votes()
        bench.reads()
        bench.batch()
        bench.drain("batches")
        bench.drain("single")
        bench.latency()
        bench.memory()
        bench.rss()
        bench.redis_stalls()
        ok = bench.correctness()
        text = render(info, soft, bench.rows, bench.notes,
                      time.perf_counter() - started, mode)
        print()
        print(text)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as handle:
            handle.write(text + "\n")
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
