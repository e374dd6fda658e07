"""Prometheus metrics of the votes service, served on METRICS_ADDRESS."""
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# the *_created series only add noise to every scrape
disable_created_metrics()

votes_applied = Counter(
    "votes_applied_total", "Votes applied to the counts.")
events_duplicate = Counter(
    "votes_events_duplicate_total",
    "vote_cast events skipped because they had been applied before.")
retries = Counter(
    "votes_handler_retries_total",
    "Handler runs retried after a failure (Redis unavailable, mostly).")
dead_lettered = Counter(
    "votes_dead_lettered_total", "Messages moved to the dead-letter queue.")
store_errors = Counter(
    "votes_store_errors_total",
    "Redis errors met by the votes service, by kind: OOM, MISCONF, BUSY, "
    "LOADING, READONLY, ... CONNECTION, TIMEOUT, AUTH are retried with "
    "back-off for as long as they last; OTHER is a mistake, and an event "
    "that keeps meeting it is dead-lettered.", ["kind"])
apply_latency = Histogram(
    "votes_apply_duration_seconds",
    "Time to apply a vote_cast event: that of the batch it was applied in.",
    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
event_votes = Histogram(
    "votes_event_votes", "Votes per vote_cast event.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
key_replays = Counter(
    "votes_idempotent_replays_total",
    "Votes skipped because their Idempotency-Key had been applied before.")
key_conflicts = Counter(
    "votes_idempotency_conflicts_total",
    "Votes skipped because their Idempotency-Key had been used for another "
    "vote.")
redirects = Counter(
    "votes_store_redirects_total",
    "Writes a Redis Cluster sent elsewhere (MOVED: the slot has moved, ASK: "
    "it is moving), followed at once.", ["kind"])
reduced_durability = Gauge(
    "votes_store_reduced_durability",
    "1 while a Redis master has fewer replicas in sync than REDIS_MIN_REPLICAS "
    "wants: its writes are acked without them (or wait, with "
    "REDIS_REPLICA_LOSS=hold) until one is back; else 0.", ["node"])
unreplicated_writes = Counter(
    "votes_store_unreplicated_writes_total",
    "Write calls to a Redis master acked on fewer replicas than "
    "REDIS_MIN_REPLICAS wants, because it had no more in sync.", ["node"])
