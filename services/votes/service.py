import json
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wrappers import Response

from services.votes import metrics, schemas
from services.votes.dependencies import VoteStore
from services.votes.entrypoints import event_handler, metrics_http, rpc
from services.votes.exceptions import InvalidVote, NotFound, StoreUnavailable

MAX_TOP = 100


def _new_id():
    return uuid.uuid4().hex


class VotesService:
    """Applies votes to the counts in Redis and answers reads."""

    name = "votes"

    store = VoteStore()

    @event_handler(
        "gateway", "vote_cast",
        schema=schemas.parse_event,
        retry_on=(StoreUnavailable,),
        expected_exceptions=(StoreUnavailable,),
    )
    def handle_vote_cast(self, event):
        metrics.event_votes.observe(len(event.votes))
        with metrics.apply_latency.time():
            applied = self.store.apply(event.id, event.votes)
        if applied:
            metrics.votes_applied.inc(applied)
        else:
            metrics.events_duplicate.inc()

    @rpc(expected_exceptions=(InvalidVote, StoreUnavailable))
    def vote(self, post_id, score, voter_id=None):
        """Apply one vote now and return the post's counts."""
        vote = schemas.parse_vote({
            "voteId": _new_id(),
            "postId": post_id,
            "score": score,
            "voterId": voter_id,
            "ts": time.time_ns() // 1000,
        })
        metrics.votes_applied.inc(self.store.apply(vote.voteId, [vote]))
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
    def top(self, limit=10):
        if type(limit) is not int or not 1 <= limit <= MAX_TOP:
            raise InvalidVote("limit: must be an integer from 1 to 100")
        return self.store.top(limit)

    @rpc
    def health(self):
        """What the gateway's /ready reports for this service."""
        return {"redis": "ok" if self.store.ping() else "unavailable"}

    @metrics_http("GET", "/health")
    def liveness(self, request):
        return Response(json.dumps({"status": "ok"}, separators=(",", ":")),
                        mimetype="application/json")

    @metrics_http("GET", "/metrics")
    def prometheus_metrics(self, request):
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
