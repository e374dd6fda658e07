"""Latency: an asyncio client votes in an open loop at half the best
single-vote rate; a probe vote in k is polled in Redis from its 202 until
it is counted."""
import time

from bench import client
from bench.context import cpu_note, fmt


def run(bench):
    for turn in range(bench.p["rounds"]):
        _once(bench, turn + 1)


def _once(bench, turn):
    rate = bench.figures["max_single"] / 2
    phase = "latency run {}".format(turn)
    host, port = bench.host_port("gateway")
    duration = bench.p["latency_window"]
    meter = bench.cpu_meter("gateway", "votes")
    rewrites_before = aof_rewrites(bench)
    stats = client.latency(host, port, bench.env.redis_uri, rate, duration,
                           probe_rate=bench.p["probe_rate"],
                           background_prefix="lt{}-".format(turn),
                           probe_prefix="lp{}-".format(turn))
    cpu = meter.shares()
    rewrites = aof_rewrites(bench) - rewrites_before
    bench.env.sample_memory()
    bench.note_other(cpu)
    bench.accepted[phase] = stats["accepted"]
    background = ["lt{}-{}".format(turn, i) for i in range(1000)]
    probes = stats["probes"]
    refused = sum(n for code, n in stats["failed"].items()
                  if isinstance(code, int) and code >= 500)
    bench.settle(phase, background + probes, stats["accepted"], refused=refused)
    if stats["lost"]:
        bench.problems.append("{}: {} probes never became visible".format(
            phase, len(stats["lost"])))
    if stats["failed"]:
        bench.notes.append("{}: failed requests {}".format(phase, stats["failed"]))
    # the API agrees with what was polled: each probe counts one upvote
    paths = ["/vote-counts?postId={}".format(post) for post in probes[:200]]
    for _attempt in range(5):  # a 503 says nothing about the counts
        answers = client.get_all(host, port, paths)
        if all(status != 503 for status, _ in answers):
            break
        time.sleep(0.5)
    wrong = [a for a in answers if a[0] != 200 or a[1].get("upvote") != 1]
    if wrong:
        bench.problems.append("{}: {} probes wrong in /vote-counts: {}".format(
            phase, len(wrong), wrong[:3]))
    visible = stats["visible_ms"]
    achieved = stats["sent"] / stats["send_seconds"]
    p50, p99 = client.percentile(visible, 50), client.percentile(visible, 99)
    bench.figures["latency_p99"] = p99
    bench.runs("202 -> visible p99", p99)
    bench.row("202 -> visible in /vote-counts, p50 / p99, run {}".format(turn),
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
        bench.notes.append(
            "{}: {} of {} votes sent more than 5 ms after their time "
            "(max {:.1f} ms): the client shares the 2 cores".format(
                phase, stats["late_sends"], stats["sent"], stats["max_send_lag_ms"]))


def aof_rewrites(bench):
    store = bench.env.redis()
    try:
        return int(store.info("persistence").get("aof_rewrites", 0))
    finally:
        store.close()
