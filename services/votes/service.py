import json
import time
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wrappers import Response

from services import contracts, rules
from services.platform.container import Waiting
from services.platform.handlers import BatchEventHandler
from services.platform.operator import ERRORS as OPERATOR_ERRORS
from services.platform.operator import OperatorGate
from services.platform.rpc import RequestId, rpc
from services.platform.web import json_response, metrics_http
from services.votes import metrics, schemas
from services.votes.dead_letters import DEAD_LETTER_QUEUE, failed_event_headers
from services.votes.exceptions import InvalidVote, NotFound, StoreUnavailable
from services.votes.feed import CountsFeed
from services.votes.store import APPLY_GROUP_VOTES, VoteStore

MAX_TOP = contracts.MAX_TOP

# the platform's batching event handler with this service's dead-letter
# queue, its metrics, and the mark lookup of an event whose handler kept
# failing; a batch is at most one apply-script call's worth of votes
event_handler = partial(
    BatchEventHandler.decorator, dead_letter_queue=DEAD_LETTER_QUEUE,
    on_retry=metrics.retries.inc, on_dead_letter=metrics.dead_lettered.inc,
    failed_headers=failed_event_headers, raw_schema=schemas.parse_event_json,
    max_weight=APPLY_GROUP_VOTES,
    weigh=lambda event: len(event.votes))
# /health, /ready and /metrics on METRICS_ADDRESS; /ready and /metrics
# behind the operator gate, as the gateway's
status_http = metrics_http(label="votes-metrics", errors=OPERATOR_ERRORS)


class VotesService:
    """Applies votes to the counts in Redis and answers reads."""

    name = contracts.VOTES_SERVICE

    store = VoteStore()
    counts_changed = CountsFeed()  # announces the posts _apply changed
    request_id = RequestId()
    waiting = Waiting()  # what /health says the service waits for
    operator = OperatorGate()

    @event_handler(
        contracts.GATEWAY_SERVICE, contracts.VOTE_CAST,
        schema=schemas.parse_event,
        retry_on=(StoreUnavailable,),
        expected_exceptions=(StoreUnavailable,),
    )
    def handle_vote_cast(self, events):
        """Apply a batch of events (BatchEventHandler): an Applied, or the
        exception of an event that could not be applied, for each."""
        started = time.perf_counter()
        outcomes = self.store.apply_group([(event.id, event.votes) for event in events])
        took = time.perf_counter() - started
        for event, outcome in zip(events, outcomes, strict=True):
            metrics.event_votes.observe(len(event.votes))
            metrics.apply_latency.observe(took)
            if not isinstance(outcome, Exception):
                self._applied(event.votes, outcome)
        return outcomes

    def _apply(self, event_id, votes):
        self._applied(votes, self.store.apply(event_id, votes))

    def _applied(self, votes, applied):
        if applied.votes:
            metrics.votes_applied.inc(applied.votes)
            self.counts_changed(vote.postId for vote in votes)
        elif not (applied.replayed or applied.conflicts):
            metrics.events_duplicate.inc()
        metrics.key_replays.inc(applied.replayed)
        metrics.key_conflicts.inc(applied.conflicts)

    @rpc(expected_exceptions=(InvalidVote, NotFound, StoreUnavailable))
    def vote(self, post_id, score, voter_id=None, idempotency_key=None):
        """Apply one vote now and return the post's counts. A redelivered
        request applies nothing more; with ``idempotency_key``, neither does
        any later call with the same key (within IDEMPOTENCY_TTL)."""
        # the vote's id comes from the request (its correlation id), so that
        # a redelivery of it applies nothing more; the RPC consumer refuses a
        # request without one before any worker runs
        request_id = self.request_id
        if request_id is None:
            raise InvalidVote("the request has no correlation id")
        fields = {
            "voteId": request_id,
            "postId": post_id,
            "score": score,
            "voterId": voter_id,
            "ts": time.time_ns() // 1000,
        }
        if idempotency_key is not None:
            key = schemas.parse_idempotency_key(idempotency_key)
            fields["voteId"] = fields["key"] = rules.key_id(key)
            fields["fp"] = rules.fingerprint([(post_id, score, voter_id)])
        vote = schemas.parse_vote(fields)
        self._apply("rpc-" + request_id, [vote])
        # NotFound after retracting on a post nobody voted on: it creates none
        return self.store.counts(post_id, voter_id)

    @rpc(expected_exceptions=(InvalidVote, NotFound, StoreUnavailable))
    def get_counts(self, post_id, voter_id=None):
        schemas.parse_identifier(post_id, "post_id")
        if voter_id is not None:
            schemas.parse_identifier(voter_id, "voter_id")
        return self.store.counts(post_id, voter_id)

    @rpc(expected_exceptions=(InvalidVote, StoreUnavailable))
    def get_counts_many(self, queries):
        """[[post_id, voter_id or None], ...] -> [counts or None, ...]"""
        pairs = schemas.parse_queries(queries)
        return self.store.counts_many(pairs)

    @rpc(expected_exceptions=(InvalidVote, StoreUnavailable))
    def top(self, limit=10, sort=None, after=None):
        """A page of a ranking (services/rankings.py): {"posts": [counts,
        ...], "next": cursor or None}. Without ``sort`` and ``after``, the
        top ``limit`` by score as a plain list, as before rankings."""
        if type(limit) is not int or not 1 <= limit <= MAX_TOP:
            raise InvalidVote("limit: must be an integer from 1 to {}".format(MAX_TOP))
        if sort is None and after is None:
            return self.store.top(limit)
        sort, after = schemas.parse_page(sort, after)
        posts, cursor = self.store.page(sort, limit, after)
        return {"posts": posts, "next": cursor}

    @rpc(expected_exceptions=(InvalidVote, StoreUnavailable))
    def set_created_at(self, post_id, created_at):
        """Set a post's creation time (RFC 3339 or seconds since the epoch),
        which hot ranks it by; returns {"postId", "createdAt"} (seconds): a
        time in the future (past MAX_CLOCK_SKEW) is taken as now. None for a
        post with no votes: it is not created."""
        schemas.parse_identifier(post_id, "post_id")
        seconds = schemas.parse_created_at(created_at)
        stored = self.store.set_created_at(post_id, seconds)
        return None if stored is None else {"postId": post_id, "createdAt": stored}

    @rpc
    def health(self):
        """What the gateway's /ready reports for this service: whether
        Redis answers and, when it does, whether writes wait for replicas
        (VoteStorage.durability)."""
        if not self.store.ping():
            return {"redis": "unavailable"}
        return dict(self.store.durability(), redis="ok")

    @status_http("GET", "/health")
    def liveness(self, request):
        """200 while the process runs; the body says what it waits for
        (services.platform.container.health)."""
        return Response(json.dumps(self.waiting(), separators=(",", ":")),
                        mimetype="application/json")

    @status_http("GET", "/ready")
    def readiness(self, request):
        """Whether this service can apply votes: its Redis answers."""
        self.operator.check(request.environ)
        if self.store.ping():
            return json_response(200, {"status": "ready", "checks": {"redis": "ok"}})
        return json_response(503, {
            "error": "NOT_READY", "message": "failing: redis",
            "checks": {"redis": "unavailable"}}, headers={"Retry-After": "1"})

    @status_http("GET", "/metrics")
    def prometheus_metrics(self, request):
        self.operator.check(request.environ)
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
