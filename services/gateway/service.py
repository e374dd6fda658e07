import itertools
import os
import re
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wrappers import Response

from services import contracts, rules
from services.gateway import metrics, page, schemas
from services.gateway.dependencies import RecentKeys, VotePublisher, VotesReader
from services.gateway.exceptions import (
    ERRORS,
    IdempotencyKeyReused,
    PostNotFound,
    RateLimited,
    VoteByGetOff,
)
from services.gateway.live import Closed, LiveCounts
from services.gateway.operator import ADDRESS_CONFIG_KEY, OperatorGate
from services.gateway.policy import VotePolicyProvider
from services.gateway.rate_limits import RateLimiter, top_read_cost
from services.gateway.tokens import VoterTokenChecker
from services.platform import correlation
from services.platform.container import Waiting
from services.platform.web import (
    event_stream,
    json_http,
    json_response,
    response_for_exception,
    sse_event,
)

OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")
with open(OPENAPI_PATH, "rb") as _spec:
    OPENAPI_DOCUMENT = _spec.read()

STREAM_RETRY_MS = 2000  # EventSource's pause before it reconnects
KEEPALIVE_SECONDS = 15

# every route answers errors from the gateway's table (exceptions.ERRORS)
http = json_http(ERRORS, label="gateway", observe=metrics.observe_request)
# /metrics, /ready and /health on OPERATOR_ADDRESS, when it is set
operator_http = json_http(ERRORS, label="gateway-operator",
                          address_config_key=ADDRESS_CONFIG_KEY)


class VoteIds:
    """32 hex digits unique across processes: a random prefix per process
    and a counter (a uuid4 per vote costs more than the rest of the id
    work together)."""

    def __init__(self):
        self.prefix = os.urandom(10).hex()
        self.counter = itertools.count()

    def __call__(self):
        return "{}{:012x}".format(self.prefix, next(self.counter))


class AcceptClock:
    """Microseconds since the epoch, strictly increasing in this process, so
    that a voter's later vote always carries the later time."""

    def __init__(self):
        self.last = 0

    def __call__(self):
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


# GET /vote-counts?postId=... and nothing else
_PLAIN_READ = re.compile("postId=({})".format(rules.ID_PATTERN.strip("^$")))
_READ_HITS = metrics.read_cache.labels("hit")


def counts_from_copy(providers, request):
    """GET /vote-counts answered from the read copy without a nameko worker
    (JsonHttp's ``inline``): a worker costs more than the rest of such a
    read. Only a query of postId alone, for a post the copy holds with its
    counts; a post due to be read again is read in the background, as the
    worker would. Anything else (None) goes to ``vote_counts``, the same
    answer either way."""
    match = _PLAIN_READ.fullmatch(request.environ.get("QUERY_STRING", ""))
    if match is None:
        return None
    try:
        providers["rate_limits"].limits.read(request.environ)
    except RateLimited as exc:
        return response_for_exception(exc, ERRORS)
    cache = providers["live"].cache
    post_id = match.group(1)
    counts = cache.held(post_id) if cache.enabled else None
    if counts is None:
        return None
    cache.refresh_if_due(post_id, providers["votes_rpc"].counts_many)
    _READ_HITS.inc()
    return json_response(200, counts)


def _vote_fields(request):
    if request.method == "POST" and request.mimetype == "application/json":
        return schemas.vote_from_json(schemas.parse_json(request.get_data()))
    return schemas.vote_from_query(
        request.values if request.method == "POST" else request.args)


class GatewayService:
    """HTTP front door: validates, queues votes as events, answers reads."""

    name = contracts.GATEWAY_SERVICE

    cast_votes = VotePublisher()
    votes_rpc = VotesReader()
    recent_keys = RecentKeys()
    live = LiveCounts()
    voter_tokens = VoterTokenChecker()
    rate_limits = RateLimiter()
    operator = OperatorGate()
    policy = VotePolicyProvider()

    clock = AcceptClock()
    new_vote_id = VoteIds()
    waiting = Waiting()  # what /health says the gateway waits for

    def _accept(self, request, votes):
        """Stamp votes with an id and the accept time, then queue them.
        With an Idempotency-Key every try gets the same vote ids, and the
        votes service counts the key's votes once."""
        self.voter_tokens.check_votes(request.environ, votes)
        if self.rate_limits is not None:
            self.rate_limits.check(request.environ, votes)
        key = schemas.idempotency_key(request.environ)
        key_id = fingerprint = None
        if key is not None:
            key_id = rules.key_id(key)
            fingerprint = rules.fingerprint(
                [(vote.postId, vote.score, vote.voterId, vote.createdAt)
                 for vote in votes])
            answered = self.recent_keys.get(key_id)
            if answered is not None:
                if answered != fingerprint:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was used for another request")
                metrics.idempotent_replays.inc()
                return self._stamp(votes, key_id, fingerprint)
        stamped = self._stamp(votes, key_id, fingerprint)
        self.cast_votes(correlation.Tagged(
            stamped, correlation.request_id(request.environ)))
        if key_id is not None:
            self.recent_keys.remember(key_id, fingerprint)
        metrics.votes_accepted.inc(len(stamped))
        return stamped

    def _stamp(self, votes, key_id, fingerprint):
        stamped = []
        for index, vote in enumerate(votes):
            entry = {
                "voteId": self.new_vote_id(),
                "postId": vote.postId,
                "score": vote.score,
                "ts": self.clock(),
            }
            if key_id is not None:
                entry["voteId"] = key_id if len(votes) == 1 else "{}-{}".format(
                    key_id, index)
                entry["key"], entry["fp"] = key_id, fingerprint
            if vote.voterId is not None:
                entry["voterId"] = vote.voterId
            if vote.createdAt is not None:  # the client's: bounded (policy)
                entry["createdAt"] = self.policy.created_at(vote.createdAt, entry["ts"])
            stamped.append(entry)
        return stamped

    @http("GET,POST", "/vote")
    def vote(self, request):
        if request.method == "GET" and not self.policy.vote_by_get:
            raise VoteByGetOff("GET /vote is turned off here (VOTE_BY_GET): POST the vote")
        (entry,) = self._accept(request, [_vote_fields(request)])
        body = {"success": True}
        body.update(entry)
        for internal in ("ts", "key", "fp", "createdAt"):
            body.pop(internal, None)
        return json_response(202, body)

    @http("POST", "/votes")
    def votes(self, request):
        votes = schemas.batch_from_json(schemas.parse_json(request.get_data()))
        self._accept(request, votes)
        return json_response(202, {"success": True, "accepted": len(votes)})

    @http("GET", "/vote-counts", inline=counts_from_copy)
    def vote_counts(self, request):
        self.rate_limits.read(request.environ)
        query = schemas.counts_query(request.args)
        self.voter_tokens.check_voter(request.environ, query.voterId)
        cache = self.live.cache
        if query.voterId is None and cache.enabled:
            found, counts = cache.get(query.postId)
            metrics.read_cache.labels("hit" if found else "miss").inc()
            if not found:
                sent = cache.clock()
                counts = self.votes_rpc.counts(query.postId, None)
                cache.put(query.postId, counts, sent)
            else:
                cache.refresh_if_due(query.postId, self.votes_rpc.counts_many)
        else:
            counts = self.votes_rpc.counts(query.postId, query.voterId)
        if counts is None:
            raise PostNotFound("post {} has no votes".format(query.postId))
        return json_response(200, counts)

    @http("GET", "/posts/top")
    def top(self, request):
        limit = schemas.top_query(request.args)
        self.rate_limits.read(request.environ, top_read_cost(limit))
        page = schemas.page_query(request.args)
        if page is None:  # as before rankings: no sort, no cursor, no next
            return json_response(200, {"posts": self.votes_rpc.top(limit)})
        return json_response(200, self.votes_rpc.top_page(limit, *page))

    @http("PUT", "/posts/<string:post_id>")
    def set_created_at(self, request, post_id):
        """A post's creation time, which hot ranks it by: an operator's
        write (services.platform.operator), on OPERATOR_ADDRESS once set."""
        self.operator.check_write_public(request.environ)
        return self._set_created_at(request, post_id)

    @operator_http("PUT", "/posts/<string:post_id>")
    def operator_set_created_at(self, request, post_id):
        self.operator.check_write(request.environ)
        return self._set_created_at(request, post_id)

    def _set_created_at(self, request, post_id):
        post_id = schemas.post_id(post_id)
        created_at = schemas.created_at_from_json(schemas.parse_json(request.get_data()))
        answer = self.votes_rpc.set_created_at(post_id, created_at)
        if answer is None:  # a post is made by its first vote, never here
            raise PostNotFound("post {} has no votes".format(post_id))
        return json_response(200, answer)

    @http("GET", "/stream", stream=True)
    def stream(self, request):
        """Server-Sent Events: a snapshot of the followed posts and the top
        N, then their changes as they land. The stream runs in the
        connection's thread (it holds no worker) and ends when the client
        leaves or the gateway stops; EventSource reconnects by itself and
        gets a fresh snapshot."""
        post_ids, top_n = schemas.stream_query(request.args)
        counts = self.votes_rpc.counts_many(post_ids) if post_ids else []
        top = self.votes_rpc.top(top_n) if top_n else []
        snapshot = {
            "posts": [found or {"postId": post_id, "upvote": 0, "downvote": 0,
                                "score": 0}
                      for post_id, found in zip(post_ids, counts, strict=True)],
            "top": top,
        }
        subscription = self.live.subscribe(post_ids, top_n, top)
        live = self.live
        first = sse_event("snapshot", snapshot, live.next_id(), retry=STREAM_RETRY_MS)

        def chunks():
            try:
                yield first
                while True:
                    updates = subscription.get(timeout=KEEPALIVE_SECONDS)
                    # one write for all that came at once
                    yield b"".join(update.wire for update in updates) \
                        if updates else b": keep-alive\n\n"
            except Closed:
                return
            finally:
                live.unsubscribe(subscription)
        return event_stream(request, chunks())

    @http("GET", "/")
    def index(self, request):
        """The live page."""
        return Response(page.index_html(self.voter_tokens), content_type=page.CONTENT_TYPE,
                        headers=page.headers())

    @http("GET", "/health")
    def health(self, request):
        """Liveness: the process answers; the body says what it waits for
        (services.platform.container.health)."""
        return json_response(200, self.waiting())

    @http("GET", "/ready")
    def ready(self, request):
        """Readiness: RabbitMQ, the votes service and its Redis answer."""
        self.operator.check_public(request.environ)
        return self._readiness()

    @operator_http("GET", "/ready")
    def operator_ready(self, request):
        self.operator.check(request.environ)
        return self._readiness()

    @operator_http("GET", "/health")
    def operator_health(self, request):
        return self.health(request)

    def _readiness(self):
        ready, checks = self.votes_rpc.readiness()
        if ready:
            return json_response(200, {"status": "ready", "checks": checks})
        failing = [name for name in ("broker", "votes", "redis")
                   if checks[name] == "unavailable"]
        return json_response(503, {
            "error": "NOT_READY",
            "message": "failing: " + ", ".join(failing),
            "checks": checks,
        }, headers={"Retry-After": "1"})

    @http("GET", "/openapi.json")
    def openapi(self, request):
        response = Response(OPENAPI_DOCUMENT, mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    @http("GET", "/metrics")
    def prometheus_metrics(self, request):
        self.operator.check_public(request.environ)
        return self._metrics()

    @operator_http("GET", "/metrics")
    def operator_metrics(self, request):
        self.operator.check(request.environ)
        return self._metrics()

    def _metrics(self):
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
