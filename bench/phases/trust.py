"""What voter tokens and rate limits cost single votes: wrk GET /vote with
a voterId (and its bearer token) on the gateway restarted with neither,
both, tokens alone, rate limits alone, rate limits with every vote from a
new client (X-Forwarded-For from a trusted proxy, and a new voterId), then
neither again; every 202 counted."""
import time

import jwt

from bench.context import cpu_note, fmt
from bench.phases.streams import gateway_ms_per_vote

SECRET = "bench-secret-long-enough-for-hs256"
VOTER = "bench"
# limits never reached: every vote goes through the whole check
NEVER = "1000000000/hour"
BOTH = {"VOTER_TOKEN_SECRET": SECRET, "RATE_LIMIT_PER_ADDRESS": NEVER,
        "RATE_LIMIT_PER_VOTER": NEVER}
# more clients than requests: every vote comes from a client (and voter)
# new to its limits, so no lease helps
CLIENTS = 1_000_000
# both right after neither, since later runs met more load from elsewhere;
# (name, settings, wrk environment)
SETUPS = (
    ("neither", {}, {}),
    ("tokens + rate limits", BOTH, {}),
    ("tokens", {"VOTER_TOKEN_SECRET": SECRET}, {}),
    ("rate limits", {"RATE_LIMIT_PER_ADDRESS": NEVER, "RATE_LIMIT_PER_VOTER": NEVER}, {}),
    ("rate limits, every vote a new client",
     {"RATE_LIMIT_PER_ADDRESS": NEVER, "RATE_LIMIT_PER_VOTER": NEVER,
      "TRUSTED_PROXIES": "127.0.0.1"}, {"BENCH_CLIENTS": str(CLIENTS)}),
    ("neither", {}, {}),
)


def run(bench):
    connections = bench.p["levels"][0]
    # each post voted once by the one voter, so every 202 is one more count
    posts = int(bench.p["window"] * 8000)
    token = jwt.encode({"sub": VOTER, "aud": "votes", "exp": int(time.time()) + 3600},
                       SECRET, algorithm="HS256")
    results = []
    for n, (name, settings, wrk_env) in enumerate(SETUPS):
        bench.env.restart_service("gateway", **settings)
        bench.env.services["gateway"].wait_http("/vote-counts?postId=bench-ready",
                                                60, {404})
        prefix = "t{}-".format(n)
        result = bench.vote_run("trust {} {}".format(n, name), connections, prefix,
                                posts=posts, mode="voter",
                                script_env=dict({"BENCH_VOTER": VOTER, "BENCH_AUTH": token},
                                                **wrk_env))
        if result.count(202) >= posts:
            bench.problems.append("trust {}: the pool of {} posts ran out".format(
                name, posts))
        results.append((name, result))
    bench.env.restart_service("gateway")
    bench.env.services["gateway"].wait_http("/vote-counts?postId=bench-ready", 60, {404})

    before, after = results[0][1], results[-1][1]
    off = (before.rate(202) + after.rate(202)) / 2
    # the gateway's CPU per vote gives the capacity ratio also when other
    # work on the machine takes a varying share of the cores
    off_cost = gateway_ms_per_vote(before, after)
    for name, result in results[1:-1]:
        rate, cost = result.rate(202), gateway_ms_per_vote(result)
        bench.figures["trust_" + name.replace(" ", "_")] = rate
        bench.row("single votes with voterId, c={}, {}".format(connections, name),
                  "{} votes/s".format(fmt(rate)),
                  "with/without {:.2f}, by gw CPU {:.2f}".format(
                      rate / off if off else 0, off_cost / cost if cost else 0),
                  result.command + " (gateway); voterId and bearer token",
                  "without: {} votes/s (mean of {} before and {} after); gateway "
                  "CPU per vote {:.2f} ms without, {:.2f} ms with; p50 {:.1f} ms "
                  "p99 {:.1f} ms; {}".format(
                      fmt(off), fmt(before.rate(202)), fmt(after.rate(202)),
                      off_cost, cost, result.p50_ms, result.p99_ms,
                      cpu_note(result.cpu)))
