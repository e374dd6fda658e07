"""Prometheus metrics of the gateway, served at GET /metrics."""
from prometheus_client import Counter, Histogram, disable_created_metrics

# the *_created series only add noise to every scrape
disable_created_metrics()

VOTE_ROUTES = ("/vote", "/votes")

votes_accepted = Counter(
    "gateway_votes_accepted_total", "Votes answered 202 (durable in RabbitMQ).")
votes_refused = Counter(
    "gateway_votes_refused_total", "Vote requests refused, by error code.",
    ["reason"])
request_latency = Histogram(
    "gateway_http_request_duration_seconds", "HTTP request latency.",
    ["route", "status"],
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
publish_failures = Counter(
    "gateway_publish_failures_total",
    "vote_cast publishes that failed (each fails every vote in its group).")
publish_group_votes = Histogram(
    "gateway_publish_group_votes", "Votes per published vote_cast event.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))


def observe_request(route, response, seconds):
    request_latency.labels(route, str(response.status_code)).observe(seconds)
    reason = getattr(response, "error_code", None)
    if reason is not None and route in VOTE_ROUTES:
        votes_refused.labels(reason).inc()


idempotent_replays = Counter(
    "gateway_idempotent_replays_total",
    "Keyed vote requests answered again from this process's memory of the "
    "key, without a publish.")
rate_limit_errors = Counter(
    "gateway_rate_limit_errors_total",
    "Vote requests whose rate limit check Redis did not answer: let through "
    "unchecked while Redis is out (fail-open), else refused with 503.")
read_cache = Counter(
    "gateway_read_cache_total",
    "GET /vote-counts reads without a voterId, by result: hit (answered from "
    "this process's copy) or miss (read through the votes RPC).",
    ["result"])
