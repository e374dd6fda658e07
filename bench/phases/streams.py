"""Streams: many GET /stream clients on one gateway process (issue 12's
scale bar). The gateway is restarted for the phase with HTTP_MAX_CONNECTIONS
above the streams plus the load's connections. Then:

* single votes with wrk, without streams (on posts nobody follows), and
  again with the streams open, on posts they follow: the ratio;
* an open loop at half the rate measured without streams; one vote in k is
  a probe on a post of its own, followed by a few streams; from its 202 to
  the first ``counts`` event for that post with ``upvote`` >= 1 at each of
  them (that event is the first to include the vote: nothing else votes on
  the post);
* the gateway's RSS with the streams open;
* 10,000 posts changed each second: the counts_changed messages the votes
  service publishes, counted by a queue of the bench's own on the votes
  events exchange.

The streams are read by bench/streams_client.py in a process of its own."""
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from kombu import Connection, Consumer, Exchange, Queue

from bench import client
from bench.context import cpu_note, fmt
from harness.process import ROOT
from services import contracts

STREAM_POSTS = 5          # posts each stream follows, besides the top 10
BACKGROUND_FOLLOWED = 3   # of them, posts of the background votes; the rest probes
TOP_N = 10
TOP_MARGIN = 1000         # the top 10's lead: more than the phase gives another post
DELIVERY_TIMEOUT = 10.0   # seconds after the last 202 for the last event
PER_REQUEST = 1000        # votes per POST /votes when 10,000 posts change a second
RETRIES = 10              # of one such POST answered 503


class StreamClients:
    """bench/streams_client.py in a process of its own."""

    def __init__(self, env, paths, watch):
        self.spec = env.tmp / "streams.json"
        self.out = env.tmp / "streams-out.json"
        host, port = "127.0.0.1", env.services["gateway"].port
        self.spec.write_text(json.dumps({
            "host": host, "port": port, "paths": paths, "watch": watch,
            "out": str(self.out), "concurrency": 50}))
        self.process = None

    def start(self):
        """Opens every stream; returns (with a snapshot, failed, seconds)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.streams_client", str(self.spec)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"))  # eventlet's own
        words = self.process.stdout.readline().split()
        if not words or words[0] != "ready":
            raise RuntimeError("streams client: {}".format(words))
        return int(words[1]), int(words[2]), float(words[3])

    @property
    def pid(self):
        return self.process.pid

    def count(self):
        """(counts events, top events, bytes, probe deliveries) so far."""
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        words = self.process.stdout.readline().split()
        return tuple(int(word) for word in words[1:])

    def stop(self):
        """Closes the streams; the results (see streams_client)."""
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            self.process.stdout.readline()
            self.process.wait(30)
            return json.loads(self.out.read_text())
        finally:
            self.kill()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Announcements(threading.Thread):
    """Counts the counts_changed messages the votes service publishes,
    from a queue of its own bound as a gateway's is."""

    def __init__(self, amqp_uri):
        super().__init__(daemon=True)
        self.amqp_uri = amqp_uri
        self.queue = Queue(
            "bench-counts-changed-" + uuid.uuid4().hex,
            exchange=Exchange(contracts.VOTES_EVENTS_EXCHANGE, type="topic",
                              durable=True, auto_delete=False),
            routing_key=contracts.COUNTS_CHANGED, durable=False,
            exclusive=True, auto_delete=True)
        self.messages = self.bytes = self.posts = 0
        self.ready = threading.Event()
        self.stopping = False

    def run(self):
        with Connection(self.amqp_uri, connect_timeout=5) as connection:
            with Consumer(connection, queues=[self.queue], no_ack=True,
                          on_message=self.on_message):
                self.ready.set()
                while not self.stopping:
                    try:
                        connection.drain_events(timeout=0.2)
                    except (TimeoutError, socket.timeout):
                        pass

    def on_message(self, message):
        self.messages += 1
        self.bytes += len(message.body)
        self.posts += len(json.loads(message.body).get("posts") or ())

    def totals(self):
        return self.messages, self.bytes, self.posts

    def stop(self):
        self.stopping = True
        self.join(5)


def seed_top(bench, host, port):
    """Ten posts far ahead of every other, so that the phase's votes on
    other posts do not move the top 10 the streams follow; returns them
    and the votes they hold."""
    # the leader's score, as the service ranks it (over every bucket)
    with urllib.request.urlopen("http://{}:{}/posts/top?limit=1".format(
            host, port), timeout=10) as answer:
        first = json.load(answer)["posts"]
    base = max(first[0]["score"], 0) if first else 0
    posts = ["st-{}".format(i) for i in range(TOP_N)]
    votes = [{"postId": post, "score": 1} for i, post in enumerate(posts)
             for _ in range(base + TOP_MARGIN + 10 * (TOP_N - i))]
    bodies = [client.batch_body(votes[i:i + 1000]) for i in range(0, len(votes), 1000)]
    accepted, failures, _ = client.post_batches(host, port, bodies, 4)
    if failures:
        bench.notes.append("streams: seeding the top failed {}".format(failures))
    bench.accepted["streams top seed"] = accepted
    bench.settle("streams top seed", posts, accepted)
    return posts, accepted


def follows(count, background, probes):
    """The posts stream i follows: BACKGROUND_FOLLOWED background posts,
    then probes up to STREAM_POSTS, each spread evenly over the streams."""
    probe_slots = STREAM_POSTS - BACKGROUND_FOLLOWED
    return [[background[(i * BACKGROUND_FOLLOWED + j) % len(background)]
             for j in range(BACKGROUND_FOLLOWED)]
            + [probes[(i * probe_slots + j) % len(probes)] for j in range(probe_slots)]
            for i in range(count)]


def stream_path(posts):
    return "/stream?{}&top={}".format("&".join("postId=" + post for post in posts), TOP_N)


def changing_posts(host, port, posts, seconds, per_request=PER_REQUEST):
    """Every post of ``posts`` voted on once a second for ``seconds``, as
    POST /votes of ``per_request`` votes sent at even intervals (open
    loop), each with an Idempotency-Key and tried again after a 503, so
    that the 202s stay exact; returns (accepted, failures, seconds until
    the last answer)."""
    bodies = [client.batch_body([{"postId": post, "score": 1}
                                 for post in posts[i:i + per_request]])
              for i in range(0, len(posts), per_request)]
    bodies *= seconds
    keys = [uuid.uuid4().hex for _ in bodies]
    start = time.perf_counter()
    accepted, failures, _ = client.post_batches(
        host, port, bodies, concurrency=16, keys=keys,
        interval=seconds / len(bodies), retries=RETRIES)
    # the last second is a whole one too
    time.sleep(max(0.0, start + seconds - time.perf_counter()))
    return accepted, failures, time.perf_counter() - start


def run(bench):
    count = bench.p["streams"]
    connections = bench.p["levels"][-1]
    window = bench.p["window"]
    env = bench.env
    # streams may hold half the connections at most; none may end mid-phase
    limit = max(count + 1000, 2 * count)
    env.restart_service("gateway", HTTP_MAX_CONNECTIONS=limit,
                        HTTP_MAX_STREAMS=count, HTTP_STREAM_LIFETIME=86400)
    gateway = env.services["gateway"]
    gateway.wait_http("/vote-counts?postId=bench-ready", 60, {404})
    host, port = bench.host_port("gateway")
    top_posts, top_votes = seed_top(bench, host, port)
    listener = Announcements(env.amqp_uri)
    listener.start()
    listener.ready.wait(10)
    streams = None
    try:
        # the same wrk run as the single-vote phase, before any stream
        alone = bench.vote_run("streams: without streams", connections, "sn-")
        rss_before = gateway.memory_kb("VmRSS")
        rate = alone.rate(202) / 2
        total = int(rate * window)
        background = bench.posts("sb-")
        probe_count = min(bench.p["streams_probes"],
                          count * (STREAM_POSTS - BACKGROUND_FOLLOWED))
        every = max(1, math.ceil(total / probe_count))
        probes = client.probe_posts(rate, window, every, "sp-")
        followed = follows(count, background, probes)
        streams = StreamClients(env, [stream_path(posts) for posts in followed], probes)
        opened, failed, connect_seconds = streams.start()
        if failed or opened != count:
            bench.problems.append("streams: {} of {} streams opened".format(opened, count))
        time.sleep(1.0)
        rss_idle = gateway.memory_kb("VmRSS")

        # single votes again, now on posts the streams follow
        meter = bench.cpu_meter(streams=streams.pid)
        before = streams.count()
        watched = bench.vote_run("streams: with streams", connections, "sb-")
        after = streams.count()
        sse_share = meter.shares().get("streams", 0)
        delivered = (after[0] - before[0] + after[1] - before[1]) / watched.window
        rss_load = gateway.memory_kb("VmRSS")

        # the open loop at half the rate without streams
        meter = bench.cpu_meter("gateway", "votes", streams=streams.pid)
        announced = listener.totals()
        start = time.perf_counter()
        stats = client.latency(host, port, None, rate, window, background_prefix="sb-",
                               background_posts=len(background), probe_prefix="sp-",
                               every=every)
        elapsed = time.perf_counter() - start
        cpu = meter.shares()
        bench.note_other(cpu)
        announced_rate = (listener.totals()[0] - announced[0]) / elapsed
        bench.accepted["streams latency"] = stats["accepted"]
        # every stream following a probe that was answered 202 should
        # get its event: wait for them (for a while)
        expected = {post: 0 for post in stats["acked_at"]}
        for posts in followed:
            for post in posts:
                if post in expected:
                    expected[post] += 1
        deliveries = sum(expected.values())
        deadline = time.perf_counter() + DELIVERY_TIMEOUT
        while streams.count()[3] < deliveries and time.perf_counter() < deadline:
            time.sleep(0.2)

        # single votes again, all on the top 10, which every stream follows
        before = streams.count()
        hot = bench.vote_run("streams: top 10", connections, "st-",
                             posts=len(top_posts), held=top_votes)
        after = streams.count()
        hot_delivered = (after[0] - before[0], after[1] - before[1])

        # 10,000 posts changed each second
        changing = bench.posts("sx-", bench.p["announce_posts"])
        marked = listener.totals()
        meter = bench.cpu_meter("gateway", "votes", streams=streams.pid)
        accepted, failures, seconds = changing_posts(
            host, port, changing, bench.p["announce_seconds"])
        busy = meter.shares()
        bench.note_other(busy)
        totals = listener.totals()
        messages, size, posts = (totals[i] - marked[i] for i in range(3))
        bench.accepted["streams changing posts"] = accepted
        if failures:
            bench.notes.append("streams: changing posts, answers other than "
                               "202 {}".format(failures))
        rss_peak = gateway.memory_kb("VmHWM")
        results = streams.stop()
        streams = None
    finally:
        if streams is not None:
            streams.kill()
        listener.stop()
    # and without streams again: the machine's other load drifts
    again = bench.vote_run("streams: without streams, after", connections, "sm-")
    env.sample_memory()
    bench.settle("streams latency", background + stats["probes"],
                 bench.accepted["streams: with streams"] + stats["accepted"],
                 refused=refused_votes(stats["failed"]))
    bench.settle("streams changing posts", changing, accepted,
                 refused=refused_votes(failures) * PER_REQUEST)

    latencies = []
    for post, acked in stats["acked_at"].items():
        for arrived in results["first"].get(post, ()):
            latencies.append((arrived - acked) * 1000)
    missing = deliveries - len(latencies)
    p50, p99 = client.percentile(latencies, 50), client.percentile(latencies, 99)
    achieved = stats["sent"] / stats["send_seconds"]
    bench.figures["streams_p99"] = p99
    if stats["failed"]:
        bench.notes.append("streams: failed votes {}".format(stats["failed"]))
    if results["errors"] or results["ended"]:
        bench.notes.append("streams: client errors {}, {} streams ended by the "
                           "gateway".format(results["errors"], results["ended"]))
    with_rate = watched.rate(202)
    alone_rate = (alone.rate(202) + again.rate(202)) / 2
    ratio = with_rate / alone_rate if alone_rate else 0
    # the gateway is the bottleneck of single votes: its CPU per vote
    # tells the capacity ratio also when other work on the machine takes
    # a varying share of the cores
    alone_cost = gateway_ms_per_vote(alone, again)
    with_cost, hot_cost = gateway_ms_per_vote(watched), gateway_ms_per_vote(hot)
    what = "{:,} streams".format(count)
    bench.row("202 -> counts event at a stream, p50 / p99",
              "{:.0f} / {:.0f} ms".format(p50, p99),
              "at {} votes/s, {}".format(fmt(achieved), what),
              "asyncio open loop GET /vote {:g} s at half the rate without "
              "streams; SSE clients in one eventlet process".format(window),
              "{} deliveries of {} probes (own post each, {} streams follow each), "
              "{} missing, max {:.0f} ms; each stream follows {} posts and "
              "top={}; {} counts_changed msgs/s; {}".format(
                 fmt(len(latencies)), fmt(len(stats["acked_at"])),
                 "-".join(map(str, sorted({min(expected.values(), default=0),
                                           max(expected.values(), default=0)}))),
                 fmt(missing), max(latencies, default=float("nan")), STREAM_POSTS,
                 TOP_N, fmt(announced_rate, 1), cpu_note(cpu)))
    bench.row("single votes GET /vote, c={}, {}".format(connections, what),
              "{} votes/s".format(fmt(with_rate)),
              "with/without {:.2f}, by gw CPU {:.2f}".format(ratio, alone_cost / with_cost),
              "{} (gateway): without, with, without the streams".format(
                 watched.command.replace("127.0.0.1:{}".format(port), "").strip()),
              "without {} votes/s (mean of {} before and {} after); gateway "
              "CPU per vote {:.2f} ms without, {:.2f} ms with; {} SSE events/s "
              "delivered during the run; sse-clients cpu {:.0f}%; with: {}".format(
                 fmt(alone_rate), fmt(alone.rate(202)), fmt(again.rate(202)),
                 alone_cost, with_cost, fmt(delivered), sse_share * 100,
                 cpu_note(watched.cpu)))
    bench.row("single votes GET /vote, c={}, on the top 10 {} follow".format(
                 connections, what),
              "{} votes/s".format(fmt(hot.rate(202))),
              "with/without {:.2f}, by gw CPU {:.2f}".format(
                 hot.rate(202) / alone_rate if alone_rate else 0, alone_cost / hot_cost),
              "the same wrk run on the {} posts of the top 10".format(len(top_posts)),
              "every stream gets each change of the 10 posts (at most one per "
              "post per flush) and the top when its order changes: {} counts and "
              "{} top events/s delivered; gateway CPU per vote {:.2f} ms; {}".format(
                 fmt(hot_delivered[0] / hot.window), fmt(hot_delivered[1] / hot.window),
                 hot_cost, cpu_note(hot.cpu)))
    bench.row("gateway RSS, {} open".format(what),
              "{} MB".format(fmt(rss_peak / 1024, 1)),
              "HTTP_MAX_CONNECTIONS={}".format(limit),
              "VmHWM of the gateway restarted for the phase",
              "VmRSS {} MB before the streams, {} MB with them idle, {} MB "
              "after the wrk run; {} opened in {:.1f} s".format(
                 fmt(rss_before / 1024, 1), fmt(rss_idle / 1024, 1),
                 fmt(rss_load / 1024, 1), fmt(opened), connect_seconds))
    bench.row("counts_changed at {} posts changed/s".format(fmt(len(changing))),
              "{} msgs/s".format(fmt(messages / seconds, 1)),
              "{} KB/s".format(fmt(size / seconds / 1000)),
              "POST /votes x1000 (with keys, a 503 tried again) spread over "
              "each second, {} s; a queue of the bench's own on the events "
              "exchange".format(
                 bench.p["announce_seconds"]),
              "{} posts per message on average; without coalescing, {} "
              "post changes/s; {}".format(
                 fmt(posts / messages if messages else 0),
                 fmt(accepted / seconds), cpu_note(busy)))


def refused_votes(failures):
    """Requests answered 5xx, of a {status or error: n}."""
    return sum(n for code, n in failures.items() if isinstance(code, int) and code >= 500)


def gateway_ms_per_vote(*results):
    """The gateway's CPU milliseconds per vote answered 202 over wrk runs."""
    seconds = sum(r.cpu.get("gateway", 0) * r.window for r in results)
    votes = sum(r.count(202) for r in results)
    return seconds * 1000 / votes if votes else float("nan")
