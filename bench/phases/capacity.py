"""Capacity: what each component costs per vote, measured on processes of
the phase's own, the sizing that follows from it, and the model checked
against two processes of a kind on this machine.

The full profile runs on a private RabbitMQ node (harness.rabbit_node):
the machine's broker serves the tests of other users, whose CPU would be
charged to our messages. --quick measures only the gateway, on the run's
broker, and prints the tables with what it has. A cost is CPU
seconds of a process over a window divided by the votes (or events) of the
window: the gateway over a wrk run; RabbitMQ over a publish-only window
(events of EVENT_VOTES votes into a queue no one consumes, the node's idle
CPU taken off) and a consume-only window (votes processes draining it);
the votes service and Redis over the same drains, on one redis-server and
on a private Redis Cluster (three masters, three replicas).

The model: a component of cost c CPU seconds a vote, given k cores, serves
k / c votes/s; a Python process (gateway, votes) is one core at most. On
this machine every process shares its cores, so the check predicts
min(n / c of the n processes doubled, (cores - what other users took) /
the sum of every process's cost a vote, 1 / c of each single process)."""
import math
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench import store_drain, wrk
from bench.context import CpuMeter, fmt
from bench.machine import cpu_seconds
from bench.phases import memory
from harness import rabbit
from harness.process import GATEWAY, VOTES, Process, free_port, wait_until, write_config
from harness.rabbit_node import RabbitNode
from services import contracts
from services.platform.brokers import CLASSIC, QUEUE_TYPE_CONFIG_KEY, QUORUM

EVENT_VOTES = 49      # the size the gateway makes under load (targets.EVENT_VOTES)
RATES = (10_000, 100_000, 1_000_000)
CONNECTIONS = 64      # wrk connections of the gateway runs (split over two gateways)
PER = 100_000         # votes of the cost figures
# the small sample of the memory phase when it did not run
SAMPLE = {"memory_posts": 2_000, "memory_voter_votes": 2_000, "memory_voter_posts": 4,
          "memory_keys": 1_000}


def run(bench):
    cap = bench.figures.setdefault("capacity", {})
    if not bench.p["capacity"]:
        _memory_seen(bench, cap)
        _gateway_quick(bench, cap)
        bench.notes.append("capacity: with --quick only the gateway's cost, on the "
                           "run's broker; all of it: python -m bench --only capacity")
        return
    _memory_figures(bench, cap)
    Capacity(bench, cap).run()


def _memory_figures(bench, cap):
    """The memory phase's figures of this run, or a small sample of it."""
    if "post_bytes" not in bench.figures:
        profile = bench.p
        bench.p = dict(profile, **SAMPLE)
        try:
            memory.run(bench)
        finally:
            bench.p = profile
        cap["memory_sample"] = True
    _memory_seen(bench, cap)


def _memory_seen(bench, cap):
    cap["memory"] = {name: bench.figures.get(name)
                     for name in ("post_bytes", "voter_vote_bytes", "key_bytes", "marks")}
    with open(bench.env.tmp / "gateway.yml") as handle:  # the run's config, resolved
        cap["mark_ttl"] = int(yaml.safe_load(handle)["APPLIED_MARK_TTL"])


def _gateway_quick(bench, cap):
    watch = bench.watch("gateway", "votes")
    result = bench.vote_run("capacity single", CONNECTIONS, "cq-", watch=watch)
    cap["gateway"] = _per_vote(result.cpu, result.rate(202))["gateway"]
    result = bench.run_wrk("gateway", "batch", 16, "cqb-", batch=100, watch=watch)
    _settle_batch(bench, "capacity batch", "cqb-", result)
    cap["gateway_batch"] = _per_vote(result.cpu, result.rate(202) * 100)["gateway"]
    bench.env.sample_memory()
    cap["rss"] = {name: bench.env.peak_kb.get(name) for name in ("gateway", "votes")}


def _settle_batch(bench, phase, prefix, result):
    bench.check_wrk(phase, result, 202)
    bench.accepted[phase] = result.count(202) * 100
    bench.settle(phase, bench.posts(prefix), bench.accepted[phase])


def _per_vote(cpu, rate):
    """CPU seconds a vote of each process, from its share of a core."""
    return {name: share / rate for name, share in cpu.items()
            if share is not None and rate}


class Capacity:

    def __init__(self, bench, cap):
        self.bench = bench
        self.cap = cap
        self.folder = Path(tempfile.mkdtemp(prefix="capacity-"))
        self.node = RabbitNode("bench{}c".format(os.getpid()))
        self.vhosts = None
        self.started = []

    def run(self):
        try:
            self.node.start()
            self.vhosts = rabbit.VhostPool(prefix="cap", batch=1, node=self.node.name)
            self.idle = self._idle_rate()
            self._gateways()
            self._drains()
        finally:
            for name in reversed(self.started):
                self.bench.env.stop_service(name)
            if self.vhosts is not None:
                self.vhosts.close(patience=30)
            self.node.stop()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _idle_rate(self, seconds=2.0):
        """The share of a core the node uses doing nothing (its timers and
        schedulers), taken off every RabbitMQ window."""
        before = cpu_seconds(self.node.pid)
        time.sleep(seconds)
        return (cpu_seconds(self.node.pid) - before) / seconds

    # --- the gateway, and one gateway against two ------------------------

    def _gateways(self):
        bench, env = self.bench, self.bench.env
        uri = self.node.uri(self.vhosts.take())
        for name, module, http in (("votes-cap", VOTES, False),
                                   ("gateway-cap1", GATEWAY, True),
                                   ("gateway-cap2", GATEWAY, True)):
            self.started.append(name)
            env.start_service(name, module, http=http, amqp_uri=uri)
        for name in ("gateway-cap1", "gateway-cap2"):
            env.services[name].wait_http("/vote-counts?postId=bench-ready", 60, {404})
        watch = {"gateway": env.services["gateway-cap1"].pid,
                 "gateway2": env.services["gateway-cap2"].pid,
                 "votes": env.services["votes-cap"].pid,
                 "redis": env.redis_pid, "rabbitmq": self.node.pid}
        watch = {name: pid for name, pid in watch.items() if pid}
        bench.vote_run("capacity warm-up", 16, "cw-", bench.p["warmup"],
                       target="gateway-cap1", watch=watch)
        bench.vote_run("capacity warm-up 2", 16, "cw2-", bench.p["warmup"],
                       target="gateway-cap2", watch=watch)
        one = bench.vote_run("capacity one gateway", CONNECTIONS, "c1-",
                             target="gateway-cap1", watch=watch)
        rate = one.rate(202)
        costs = _per_vote(one.cpu, rate)
        self.cap["gateway"] = costs.get("gateway")
        self.cap["gateway_run"] = costs
        two = self._two_gateways(watch)
        self.cap["checks"] = [
            _check(("gateway", "gateways"), 1, rate, costs, "gateway", one.cpu["other"]),
            _check(("gateway", "gateways"), 2, two["rate"], costs, "gateway", two["other"]),
        ]
        batch = bench.run_wrk("gateway-cap1", "batch", 16, "cb-", batch=100, watch=watch)
        _settle_batch(bench, "capacity batch", "cb-", batch)
        self.cap["gateway_batch"] = _per_vote(batch.cpu, batch.rate(202) * 100).get("gateway")
        env.sample_memory()
        self.cap["rss"] = {"gateway": env.peak_kb.get("gateway-cap1"),
                           "votes": env.peak_kb.get("votes-cap"),
                           "rabbitmq": _rss_kb(self.node.pid)}
        bench.row("capacity: one gateway, c={}".format(CONNECTIONS),
                  "{} votes/s".format(fmt(rate)), "", one.command + " (private RabbitMQ)",
                  _costs_line(costs))
        bench.row("capacity: two gateways, c={} each".format(CONNECTIONS // 2),
                  "{} votes/s".format(fmt(two["rate"])),
                  "x{:.2f} of one".format(two["rate"] / rate if rate else 0),
                  "two wrk at once, one per gateway", "cpu " + " ".join(
                      "{} {:.0f}%".format(n, s * 100) for n, s in two["cpu"].items()))

    def _two_gateways(self, watch):
        bench = self.bench
        results = {}

        def one(name, prefix, pids):
            results[name] = wrk.run(
                bench.wrk, bench.env.url(name), "vote", CONNECTIONS // 2,
                bench.p["window"], bench.p["tail"], prefix, bench.p["posts"],
                watch=pids, tmp=bench.env.tmp)

        threads = [threading.Thread(target=one, args=("gateway-cap1", "c2a-", watch)),
                   threading.Thread(target=one, args=("gateway-cap2", "c2b-", {}))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = 0
        for name, prefix in (("gateway-cap1", "c2a-"), ("gateway-cap2", "c2b-")):
            result = results[name]
            phase = "capacity two gateways " + prefix
            bench.check_wrk(phase, result, 202)
            bench.accepted[phase] = result.count(202)
            bench.settle(phase, bench.posts(prefix), result.count(202))
            rate += result.rate(202)
        first, second = results["gateway-cap1"], results["gateway-cap2"]
        cpu = dict(first.cpu)
        # the second wrk is ours, not another user's
        cpu["wrk"] = first.cpu["wrk"] + second.cpu["wrk"]
        cpu["other"] = max(0.0, first.cpu["other"] - second.cpu["wrk"])
        bench.note_other(cpu)
        return {"rate": rate, "other": cpu["other"], "cpu": cpu}

    # --- RabbitMQ, the votes service and Redis: drains --------------------

    def _drains(self):
        total = self.bench.p["capacity_votes"]
        runs = (
            ("classic", "single", CLASSIC, False, 1),
            ("quorum", "single", QUORUM, False, 1),
            ("classic voters", "single", CLASSIC, True, 1),
            ("two votes", "single", CLASSIC, False, 2),
            ("cluster", "cluster", CLASSIC, False, 1),
            ("cluster voters", "cluster", CLASSIC, True, 1),
        )
        drains = self.cap["drains"] = {}
        stores = {}
        try:
            for label, kind, queue_type, voters, processes in runs:
                if kind not in stores:
                    (self.folder / ("store-" + kind)).mkdir()
                    stores[kind] = store_drain.Store(kind, self.folder / ("store-" + kind))
                drains[label] = self._drain(label, stores[kind], total, queue_type,
                                            voters, processes)
                self._row(label, drains[label])
        finally:
            for store in stores.values():
                store.stop()
        one, two = drains["classic"], drains["two votes"]
        kind = ("votes process", "votes processes")
        self.cap["checks"] += [
            _check(kind, 1, one["rate"], one["cost"], "votes", one["other"]),
            _check(kind, 2, two["rate"], one["cost"], "votes", two["other"]),
        ]

    def _row(self, label, drain):
        self.bench.row(
            "capacity: drain, {}".format(label), "{} votes/s".format(fmt(drain["rate"])), "",
            "{:,} votes in events of {} into a private RabbitMQ, then {} idle votes "
            "process{} draining them".format(drain["votes"], EVENT_VOTES, drain["processes"],
                               "es" if drain["processes"] > 1 else ""),
            "publish: RabbitMQ {:.0f} us an event; consume: {}".format(
                drain["publish_event"] * 1e6, _costs_line(drain["cost"])))

    def _drain(self, label, store, total, queue_type, voters, processes):
        """Two halves of ``total`` votes each. The first is published into
        a queue no one consumes (what publishing costs RabbitMQ), then
        drained by ``processes`` votes processes as they start. The second
        is published while they run, idle: the consume window, less the
        publish cost of the first, which is the same events."""
        vhost = self.vhosts.take()
        uri = self.node.uri(vhost)
        folder = self.folder / ("drain-" + label.replace(" ", "-"))
        folder.mkdir()
        votes = []
        for i in range(processes):
            config = write_config(folder / "votes{}.yml".format(i), uri, store.uri,
                                  free_port(), base=self.bench.env.config_path,
                                  log_level="WARNING",
                                  settings={QUEUE_TYPE_CONFIG_KEY: queue_type})
            votes.append(Process.nameko("votes{}".format(i), VOTES, config,
                                        folder / "votes{}.log".format(i)))
        client = store.client()
        try:
            votes[0].start()  # once, so that it declares its queue
            self._consumers(uri, 1)
            votes[0].stop()
            name = label.replace(" ", "-")
            halves = [["cap-{}{}-{}".format(name, half, i) for i in range(1000)]
                      for half in "ab"]
            events = [list(_events(total, posts, voters)) for posts in halves]
            meter = CpuMeter({"rabbitmq": self.node.pid})
            store_drain._publish(uri, events[0])
            wait_until(lambda: rabbit.queue_state(uri, contracts.VOTES_QUEUE)[0]
                       >= len(events[0]), 60, "the events queued")
            self._beam_settled()
            publish = self._beam_seconds(meter) / len(events[0])
            for process in votes:
                process.start()
            self._consumers(uri, processes)
            self._counted(store, client, halves[0], total, label)
            pids = dict({"rabbitmq": self.node.pid}, **_redis_pids(store))
            pids.update({"votes{}".format(i): p.pid for i, p in enumerate(votes)})
            marks = _marks(client)
            meter = CpuMeter(pids)
            store_drain._publish(uri, events[1])
            self._counted(store, client, halves[1], total, label)
            elapsed = time.perf_counter() - meter.start
            cpu = meter.shares()
            cpu["rabbitmq"] = max(0.0, cpu["rabbitmq"] - self.idle
                                  - publish * len(events[1]) / elapsed)
            rate = total / elapsed
            cost = _per_vote(cpu, rate)
            masters = sum(c for n, c in cost.items() if n.startswith("redis-m"))
            _merge(cost, "votes", [n for n in cost if n.startswith("votes")])
            _merge(cost, "redis", [n for n in cost if n.startswith("redis-")])
            return {"rate": rate, "votes": total, "processes": processes, "cost": cost,
                    "masters": masters if store.kind == "cluster" else None,
                    "other": cpu["other"], "publish_event": publish,
                    "events": len(events[1]), "cpu": cpu,
                    "marks": (_marks(client) - marks) / len(events[1])}
        finally:
            for process in votes:
                process.kill()
            client.close()
            self.vhosts.release(vhost)

    @staticmethod
    def _consumers(uri, count):
        wait_until(lambda: rabbit.queue_state(uri, contracts.VOTES_QUEUE)[1] >= count,
                   60, "{} votes process(es) to consume".format(count))

    @staticmethod
    def _counted(store, client, posts, total, label):
        deadline = time.perf_counter() + store_drain.SETTLE_TIMEOUT
        while time.perf_counter() < deadline:
            got = store.counted(client, posts)
            if got >= total:
                assert got == total, "{}: {} counted, {} queued".format(label, got, total)
                return
            time.sleep(store_drain.POLL)
        raise AssertionError("capacity {}: not all {} votes counted".format(label, total))

    def _beam_settled(self, limit=0.05, patience=10.0):
        """Until the node has written what it was sent (its CPU back near
        idle)."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            before = cpu_seconds(self.node.pid)
            time.sleep(0.25)
            if (cpu_seconds(self.node.pid) - before) / 0.25 < self.idle + limit:
                return

    def _beam_seconds(self, meter):
        elapsed = time.perf_counter() - meter.start
        return max(0.0, meter.shares()["rabbitmq"] - self.idle) * elapsed


def _merge(cost, name, parts):
    """Several processes of a kind (votes0 + votes1, the cluster's nodes)
    as one component."""
    if parts and name not in cost:
        cost[name] = sum(cost.pop(part) for part in parts)


def _marks(client):
    """The exactly-once marks in Redis (one per event on one server, one per
    event and bucket it touched on a cluster)."""
    return sum(1 for _ in client.scan_iter(match=contracts.APPLIED_KEY_PATTERN, count=1000))


def _redis_pids(store):
    if store.kind == "single":
        return {"redis": store.server.pid}
    roles = store.server.roles()
    return {"redis-{}{}".format("m" if roles.get(port) == "master" else "r", port): node.pid
            for port, node in zip(store.server.ports, store.server.nodes, strict=True)}


def _events(total, posts, voters):
    for event in store_drain._events(total, EVENT_VOTES, posts, random.Random(EVENT_VOTES)):
        if voters:  # a voter of its own for each: each vote a new voter vote
            for vote in event["votes"]:
                vote["voterId"] = "u" + vote["voteId"][:16]
        yield event


def _rss_kb(pid):
    try:
        with open("/proc/{}/status".format(pid)) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, TypeError):
        pass
    return None


def _costs_line(costs):
    return "CPU us a vote: " + " ".join(
        "{} {:.1f}".format(name, cost * 1e6) for name, cost in costs.items()
        if cost >= 5e-8 and name != "other")


def _check(kind, n, measured, costs, process, other):
    """The model's throughput for ``n`` processes of a kind, from the costs
    a vote of the run with one, with the cores other users took during the
    run predicted."""
    cores = os.cpu_count() or 1
    available = max(0.1, cores - other)
    ours = sum(cost for name, cost in costs.items() if name != "other")
    limits = {"machine ({:.2f} cores for ours)".format(available): available / ours}
    limits["{} x{}".format(process, n)] = n / costs[process]
    for name in ("votes", "gateway", "redis"):  # one process each: a core at most
        if name != process and costs.get(name):
            limits[name + " x1"] = 1 / costs[name]
    bound, predicted = min(limits.items(), key=lambda item: item[1])
    return {"kind": kind[n > 1], "n": n, "measured": measured, "predicted": predicted,
            "bound": bound, "error": (measured - predicted) / predicted * 100}


# --- the tables ----------------------------------------------------------------

def _cores(rate, cost):
    return None if cost is None else rate * cost


def _n(value, digits=1):
    return "n/a" if value is None else "{:,.{}f}".format(value, digits)


def table(bench):
    """The capacity lines (markdown), after the targets table."""
    cap = bench.figures.get("capacity")
    if cap is None:
        return []
    lines = ["", "capacity: CPU seconds per 100k votes of each component on this machine "
             "(its header: date, CPU, cores), and the sizing that follows (bench/phases/"
             "capacity.py); events of {} votes, {}".format(
                 EVENT_VOTES, "a private RabbitMQ node" if "drains" in cap
                 else "the run's broker (--quick: the gateway alone)"),
             "", "| component | CPU s per 100k votes | per message or call | measured by |",
             "|---|---|---|---|"]

    def cost_row(what, per_vote, per_call, unit, how):
        lines.append("| {} | {} | {} | {} |".format(
            what, _n(None if per_vote is None else per_vote * PER, 2),
            "n/a" if per_call is None else "{:,.0f} us {}".format(per_call * 1e6, unit), how))

    gw, gwb = cap.get("gateway"), cap.get("gateway_batch")
    cost_row("gateway, single votes", gw, gw, "a GET /vote",
             "its process CPU over wrk c={} / votes answered 202".format(CONNECTIONS))
    cost_row("gateway, batches of 100", gwb, None if gwb is None else gwb * 100,
             "a POST /votes", "the same, wrk POST /votes x100 c=16")
    drains = cap.get("drains", {})
    model = _model(cap)
    for queue in ("classic", "quorum"):
        drain = drains.get(queue)
        if drain is None:
            continue
        publish, deliver = drain["publish_event"], drain["cost"].get("rabbitmq")
        cost_row("RabbitMQ {} queue, publish".format(queue), publish / EVENT_VOTES,
                 publish, "an event", "beam.smp CPU, publish-only window less idle")
        cost_row("RabbitMQ {} queue, deliver + ack".format(queue), deliver,
                 None if deliver is None else deliver * EVENT_VOTES, "an event",
                 "beam.smp CPU, consume-only window less idle")
    for label, what in (("classic", "votes service"), ("classic voters",
                                                      "votes service, voter votes")):
        drain = drains.get(label)
        if drain:
            cost = drain["cost"].get("votes")
            cost_row(what, cost, cost * EVENT_VOTES, "an event",
                     "its process CPU over the drain / votes counted")
    for label, what in (("classic", "Redis, one server"),
                        ("classic voters", "Redis, one server, voter votes"),
                        ("cluster", "Redis Cluster 3+3, all six"),
                        ("cluster voters", "Redis Cluster 3+3, all six, voter votes")):
        drain = drains.get(label)
        if drain and drain["cost"].get("redis") is not None:
            cost, masters = drain["cost"]["redis"], drain["masters"]
            cost_row(what + ("" if masters is None else " (masters {:.2f} s)".format(
                masters * PER)), cost, cost * EVENT_VOTES, "an event",
                "redis-server CPU over the drain")
    mem = cap.get("memory", {})
    lines.append("")
    lines.append("memory{}: {} B a post, {} B a voter vote, {} B an Idempotency-Key "
                 "(Redis, the memory phase); RSS gateway {} MB, votes {} MB, RabbitMQ "
                 "node {} MB".format(
                     " (a small sample)" if cap.get("memory_sample") else "",
                     _n(mem.get("post_bytes"), 0), _n(mem.get("voter_vote_bytes"), 0),
                     _n(mem.get("key_bytes"), 0),
                     *(_n(None if not cap.get("rss", {}).get(n) else cap["rss"][n] / 1024, 0)
                       for n in ("gateway", "votes", "rabbitmq"))))
    mark_bytes = (mem.get("marks") or (0, None))[1]
    for label, what in (("classic", "one Redis (one per event)"),
                        ("cluster", "a Redis Cluster (one per bucket it touched)")):
        per_event = drains.get(label, {}).get("marks")
        if per_event and mark_bytes:
            lines.append("exactly-once marks on {}: {:.1f} an event of {} votes over 1,000 "
                         "posts, ~{} B each, kept APPLIED_MARK_TTL = {:,} s: {:.1f} GB per "
                         "1,000 events/s".format(
                             what, per_event, EVENT_VOTES, mark_bytes, cap["mark_ttl"],
                             1000 * per_event * mark_bytes * cap["mark_ttl"] / 1e9))
    lines += _sizing(cap, model)
    lines += _checks(cap)
    return lines


def _model(cap):
    """Cost a vote of each component, without and with voters."""
    drains = cap.get("drains", {})

    def cost(label, name):
        drain = drains.get(label)
        return drain["cost"].get(name) if drain else None

    def queue(label):
        drain = drains.get(label)
        if not drain or drain["cost"].get("rabbitmq") is None:
            return None
        return drain["publish_event"] / EVENT_VOTES + drain["cost"]["rabbitmq"]

    out = {}
    for voters, suffix in ((False, ""), (True, " voters")):
        drain = drains.get("cluster" + suffix)
        masters = drain["masters"] if drain else None
        out[voters] = {
            "gateway": cap.get("gateway"), "gateway_batch": cap.get("gateway_batch"),
            "classic": queue("classic"), "quorum": queue("quorum"),
            "votes": cost("classic" + suffix, "votes"),
            "redis": cost("classic" + suffix, "redis"),
            "masters": masters,
        }
    return out


def _sizing(cap, model):
    lines = ["", "sizing: cores of each component at full use (plan headroom on top), "
             "for a rate of votes/s; a Python process (gateway, votes) uses one core "
             "at most, so processes = cores rounded up; RabbitMQ for publish + deliver "
             "of events of {} votes".format(EVENT_VOTES), "",
             "| votes/s | voters | gateway cores, single votes (batches) | RabbitMQ cores "
             "classic (quorum) | votes cores | Redis cores | Redis Cluster masters | "
             "queues | memory |", "|---|---|---|---|---|---|---|---|---|"]
    for rate in RATES:
        for voters in (False, True):
            m = model[voters]
            queue_cap = _queue_ceiling(m["classic"])
            masters = None if m["masters"] is None else max(1, math.ceil(rate * m["masters"]))
            lines.append("| {:,} | {} | {} ({}) | {} ({}) | {} | {} | {} | {} | {} |".format(
                rate, "yes" if voters else "no",
                _n(_cores(rate, m["gateway"])), _n(_cores(rate, m["gateway_batch"])),
                _n(_cores(rate, m["classic"])), _n(_cores(rate, m["quorum"])),
                _n(_cores(rate, m["votes"])), _n(_cores(rate, m["redis"])),
                "n/a" if masters is None else masters,
                "n/a" if queue_cap is None else max(1, math.ceil(rate / queue_cap)),
                _memory(rate, voters, cap, m, cluster=bool(masters and masters > 1))))
    lines += _limits(model)
    return lines


def _queue_ceiling(per_vote):
    """One queue is one Erlang process, so at most one core: a low estimate
    charges it all of RabbitMQ's CPU an event."""
    return None if not per_vote else 1 / per_vote


def _memory(rate, voters, cap, m, cluster=False):
    """The memory of a row; its marks as on a Redis Cluster when the row
    needs more than one master."""
    mem, rss = cap.get("memory", {}), cap.get("rss", {})
    parts = []
    for name in ("gateway", "votes"):
        cores = _cores(rate, m[name])
        if cores is not None and rss.get(name):
            parts.append("{} {:.1f} GB".format(name, math.ceil(cores) * rss[name] / 1024 ** 2))
    mark_bytes = (mem.get("marks") or (0, None))[1]
    per_event = cap.get("drains", {}).get("cluster" if cluster else "classic", {}).get("marks")
    if mark_bytes and per_event:  # kept APPLIED_MARK_TTL
        parts.append("Redis marks {:.1f} GB".format(
            rate / EVENT_VOTES * per_event * cap["mark_ttl"] * mark_bytes / 1e9))
    if voters and mem.get("voter_vote_bytes"):
        parts.append("+ {:,.0f} GB a day of voter votes".format(
            rate * 86400 * mem["voter_vote_bytes"] / 1e9))
    return "; ".join(parts) or "n/a"


def _limits(model):
    m = model[False]
    lines = ["", "where one of a kind stops scaling (votes/s one instance serves, "
             "without voters / with):"]
    ceilings = {}
    for name, what in (("gateway", "one gateway process (single votes)"),
                       ("votes", "one votes process"),
                       ("classic", "one classic queue (one Erlang process; low estimate: "
                        "all of RabbitMQ's CPU charged to it)"),
                       ("quorum", "one quorum queue (the same estimate)"),
                       ("redis", "one redis-server (one core)")):
        if m[name] is None:
            lines.append("- {}: not measured".format(what))
            continue
        ceilings[name] = 1 / m[name]
        voter = model[True][name]
        lines.append("- {}: {:,.0f}{}".format(
            what, 1 / m[name], "" if voter is None or voter == m[name]
            else " / {:,.0f}".format(1 / voter)))
    if ceilings:
        first = min(("classic", "redis"), key=lambda n: ceilings.get(n, math.inf))
        if first in ceilings:
            lines.append(
                "- what runs out first: {} at {:,.0f} votes/s (the gateway and votes "
                "processes scale by adding processes). Past one queue: shard the votes "
                "queue by bucket (a queue per group of buckets, one routing key each, "
                "consumers per queue); past one redis-server: Redis Cluster, masters = "
                "the Redis cores above rounded up (the buckets' hash tags spread posts "
                "over the slots)".format(
                    "one redis-server" if first == "redis" else "one classic queue",
                    ceilings[first]))
    return lines


def _checks(cap):
    checks = cap.get("checks")
    if not checks:
        return []
    lines = ["", "the model against this machine: throughput = min over components of "
             "the cores it can use / its CPU a vote, from the run with one process; "
             "the 2 cores shared by every process, less what other users took during "
             "the run ({} cores in all)".format(os.cpu_count()), "",
             "| processes | measured votes/s | predicted | error | bound by |",
             "|---|---|---|---|---|"]
    for check in checks:
        lines.append("| {} {} | {:,.0f} | {:,.0f} | {:+.0f}% | {} |".format(
            check["n"], check["kind"], check["measured"] or 0, check["predicted"],
            check["error"], check["bound"]))
    errors = [abs(c["error"]) for c in checks if c["n"] == 2]
    if errors:
        lines.append("")
        lines.append("median |error| of the doubled runs: {:.0f}%".format(
            statistics.median(errors)))
    return lines
