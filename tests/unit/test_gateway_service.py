"""GatewayService's routes with worker_factory: the publisher and the votes
reader replaced (no broker), the answers and what is queued."""
import itertools
import json
from types import SimpleNamespace

import pytest
from nameko.testing.services import worker_factory
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services import rankings, rules
from services.gateway import schemas
from services.gateway.exceptions import (
    ERRORS,
    IdempotencyKeyReused,
    PostNotFound,
    ServiceUnavailable,
    ValidationError,
)
from services.gateway.operator import OperatorAccess
from services.gateway.policy import VotePolicy
from services.gateway.read_cache import CountsCache
from services.gateway.service import GatewayService
from services.platform.web import response_for_exception

COUNTS = {"postId": "348", "upvote": 2, "downvote": 1, "score": 1}
OPERATOR = "s3cret-operator"


class Keys:
    """RecentKeys' interface, without its provider."""

    def __init__(self):
        self.entries = {}

    def get(self, key_id):
        return self.entries.get(key_id)

    def remember(self, key_id, fingerprint):
        self.entries[key_id] = fingerprint


@pytest.fixture
def service():
    # the live feed's stand-in: a real copy of the counts, never announced to
    return worker_factory(GatewayService, recent_keys=Keys(),
                          live=SimpleNamespace(cache=CountsCache(1.0, 100)),
                          policy=VotePolicy(), operator=OperatorAccess(False, None))


def request(path, method="GET", **kwargs):
    return Request(EnvironBuilder(path=path, method=method, **kwargs).get_environ())


def operator_request(path, **kwargs):
    return request(path, "PUT", headers={"Authorization": "Bearer " + OPERATOR}, **kwargs)


def body(response):
    return json.loads(response.get_data())


def queued(service):
    """Every vote handed to the publisher, in order."""
    return [vote for (votes,), _ in service.cast_votes.call_args_list for vote in votes]


def test_get_vote_is_queued_and_answered_202(service):
    response = service.vote(request("/vote?postId=348&score=1"))
    assert response.status_code == 202
    (vote,) = queued(service)
    assert set(vote) == {"voteId", "postId", "score", "ts"}
    assert (vote["postId"], vote["score"]) == ("348", 1)
    assert body(response) == {"success": True, "voteId": vote["voteId"],
                              "postId": "348", "score": 1}


def test_post_vote_as_json_with_a_voter(service):
    response = service.vote(request("/vote", "POST", json={
        "postId": "9", "score": -1, "voterId": "ann"}))
    assert response.status_code == 202
    (vote,) = queued(service)
    assert (vote["postId"], vote["score"], vote["voterId"]) == ("9", -1, "ann")
    assert body(response)["voterId"] == "ann"


def test_votes_are_stamped_with_increasing_times_and_distinct_ids(service):
    for _ in range(3):
        service.vote(request("/vote?postId=1&score=1"))
    votes = queued(service)
    assert len({vote["voteId"] for vote in votes}) == 3
    assert [vote["ts"] for vote in votes] == sorted({vote["ts"] for vote in votes})


def test_an_invalid_vote_queues_nothing(service):
    with pytest.raises(ValidationError, match="^score: must be 1 or -1"):
        service.vote(request("/vote?postId=348&score=2"))
    service.cast_votes.assert_not_called()


def test_a_batch_is_queued_in_one_call(service):
    response = service.votes(request("/votes", "POST", json={"votes": [
        {"postId": "1", "score": 1}, {"postId": "2", "score": -1, "voterId": "bo"}]}))
    assert (response.status_code, body(response)) == (
        202, {"success": True, "accepted": 2})
    service.cast_votes.assert_called_once()
    assert [(v["postId"], v["score"]) for v in queued(service)] == [("1", 1), ("2", -1)]


def test_vote_counts(service):
    service.votes_rpc.counts.return_value = COUNTS
    response = service.vote_counts(request("/vote-counts?postId=348&voterId=ann"))
    assert (response.status_code, body(response)) == (200, COUNTS)
    service.votes_rpc.counts.assert_called_once_with("348", "ann")


def test_vote_counts_of_an_unknown_post(service):
    service.votes_rpc.counts.return_value = None
    with pytest.raises(PostNotFound, match="^post 999 has no votes$"):
        service.vote_counts(request("/vote-counts?postId=999"))


def test_vote_counts_read_again_come_from_the_copy(service):
    service.votes_rpc.counts.return_value = COUNTS
    for _ in range(3):
        response = service.vote_counts(request("/vote-counts?postId=348"))
        assert (response.status_code, body(response)) == (200, COUNTS)
    service.votes_rpc.counts.assert_called_once_with("348", None)
    # a voter's own vote is never answered from it
    service.vote_counts(request("/vote-counts?postId=348&voterId=ann"))
    service.vote_counts(request("/vote-counts?postId=348&voterId=ann"))
    assert service.votes_rpc.counts.call_count == 3


def test_a_post_read_late_in_its_entrys_life_is_read_again_in_the_background(service):
    clock = [1000.0]
    cache = service.live.cache
    cache.clock = lambda: clock[0]
    service.votes_rpc.counts.return_value = COUNTS
    service.vote_counts(request("/vote-counts?postId=348"))
    clock[0] = 1000.8
    newer = dict(COUNTS, upvote=COUNTS["upvote"] + 1, score=COUNTS["score"] + 1)
    service.votes_rpc.counts_many.return_value = [newer]
    # answered from the copy at once; the read again runs beside
    assert body(service.vote_counts(request("/vote-counts?postId=348"))) == COUNTS
    assert cache.refresher is not None
    cache.refresher.wait()
    service.votes_rpc.counts_many.assert_called_once_with(["348"])
    assert body(service.vote_counts(request("/vote-counts?postId=348"))) == newer
    assert (cache.refresher, cache.refreshing) == (None, set())
    assert service.votes_rpc.counts.call_count == 1


def test_a_failed_read_is_not_kept(service):
    service.votes_rpc.counts.side_effect = ServiceUnavailable("late")
    with pytest.raises(ServiceUnavailable):
        service.vote_counts(request("/vote-counts?postId=5"))
    service.votes_rpc.counts.side_effect = None
    service.votes_rpc.counts.return_value = COUNTS
    assert service.vote_counts(request("/vote-counts?postId=5")).status_code == 200


def test_vote_counts_when_the_votes_service_is_slow(service):
    service.votes_rpc.counts.side_effect = ServiceUnavailable("late")
    with pytest.raises(ServiceUnavailable):
        service.vote_counts(request("/vote-counts?postId=1"))


def test_top(service):
    service.votes_rpc.top.return_value = [COUNTS]
    response = service.top(request("/posts/top?limit=2"))
    assert (response.status_code, body(response)) == (200, {"posts": [COUNTS]})
    service.votes_rpc.top.assert_called_once_with(2)


def test_top_refuses_a_bad_limit(service):
    with pytest.raises(ValidationError):
        service.top(request("/posts/top?limit=0"))
    service.votes_rpc.top.assert_not_called()


def test_ready(service):
    checks = {"broker": "ok", "votes": "ok", "redis": "ok",
              "queue": {"waiting": 0, "consumers": 1}}
    service.votes_rpc.readiness.return_value = (True, checks)
    response = service.ready(request("/ready"))
    assert (response.status_code, body(response)) == (
        200, {"status": "ready", "checks": checks})


def test_not_ready_names_what_fails(service):
    checks = {"broker": "ok", "votes": "unavailable", "redis": "unknown"}
    service.votes_rpc.readiness.return_value = (False, checks)
    response = service.ready(request("/ready"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert body(response) == {"error": "NOT_READY", "message": "failing: votes",
                              "checks": checks}


def test_a_keyed_vote_is_queued_once_and_answered_again_from_recent_keys(service):
    headers = {"Idempotency-Key": "order-17"}
    first = service.vote(request("/vote?postId=348&score=1", headers=headers))
    again = service.vote(request("/vote?postId=348&score=1", headers=headers))
    service.cast_votes.assert_called_once()
    assert body(first) == body(again)
    assert body(first)["voteId"] == rules.key_id("order-17")
    (vote,) = queued(service)
    assert (vote["key"], vote["fp"]) == (
        rules.key_id("order-17"), rules.fingerprint([("348", 1, None)]))


def test_a_reused_key_is_refused_422_and_queues_nothing_more(service):
    headers = {"Idempotency-Key": "order-17"}
    service.vote(request("/vote?postId=348&score=1", headers=headers))
    with pytest.raises(IdempotencyKeyReused) as error:
        service.vote(request("/vote?postId=348&score=-1", headers=headers))
    service.cast_votes.assert_called_once()
    response = response_for_exception(error.value, ERRORS)
    assert (response.status_code, body(response)["error"]) == (
        422, "IDEMPOTENCY_KEY_REUSED")


def test_a_key_is_remembered_only_once_queued(service):
    service.cast_votes.side_effect = ConnectionError("down")
    with pytest.raises(ConnectionError):
        service.vote(request("/vote?postId=1&score=1",
                             headers={"Idempotency-Key": "k1"}))
    assert service.recent_keys.entries == {}


def test_a_page_of_a_ranking(service):
    page = {"posts": [COUNTS], "next": "abc"}
    service.votes_rpc.top_page.return_value = page
    response = service.top(request("/posts/top?sort=hot&limit=1"))
    assert (response.status_code, body(response)) == (200, page)
    service.votes_rpc.top_page.assert_called_once_with(1, "hot", None)
    cursor = rankings.encode_cursor("best", -0.5, "348")
    service.top(request("/posts/top?sort=best&after=" + cursor))
    service.votes_rpc.top_page.assert_called_with(10, "best", cursor)
    service.votes_rpc.top.assert_not_called()


@pytest.mark.parametrize("query, message", [
    ("sort=new", "sort: must be one of top, best, controversial, hot"),
    ("sort=hot&sort=top", "sort: given more than once"),
    ("after=%21", "after: is not a cursor from this API"),
    ("sort=top&after=" + rankings.encode_cursor("hot", -1.0, "1"),
     "after: is a cursor of sort=hot, not top"),
    ("after=" + rankings.encode_cursor("hot", -1.0, "1"),
     "after: is a cursor of sort=hot, not top"),
])
def test_a_bad_page_asks_nothing(service, query, message):
    with pytest.raises(ValidationError) as error:
        service.top(request("/posts/top?" + query))
    assert str(error.value) == message
    service.votes_rpc.top_page.assert_not_called()


def test_created_at_goes_with_the_vote_in_seconds_within_the_window(service):
    service.clock = itertools.count(1_700_000_000_500_000).__next__  # accept times
    response = service.vote(request("/vote?postId=1&score=1&createdAt=2023-11-14T22:11:20Z"))
    service.votes(request("/votes", "POST", json={"votes": [
        {"postId": "2", "score": 1, "createdAt": 1699999700.5}, {"postId": "3", "score": 1}]}))
    assert [vote.get("createdAt") for vote in queued(service)] == [
        1_699_999_880, 1_699_999_700, None]
    assert "createdAt" not in body(response)


@pytest.mark.parametrize("created_at, stored", [
    (0, 1_699_999_700),                      # 1970: the window's start
    ("1999-01-01T00:00:00Z", 1_699_999_700),
    (1_699_999_699, 1_699_999_700),
    (1_699_999_700, 1_699_999_700),
    (1_700_000_000, 1_700_000_000),          # the accept second
    (1_700_000_001, 1_700_000_000),          # ahead: the accept second
    ("9999-12-31T23:59:59Z", 1_700_000_000),
])
def test_a_clients_created_at_is_clamped_to_the_window(service, created_at, stored):
    service.clock = itertools.count(1_700_000_000_999_999).__next__
    service.votes(request("/votes", "POST", json={"votes": [
        {"postId": "2", "score": 1, "createdAt": created_at}]}))
    assert [vote["createdAt"] for vote in queued(service)] == [stored]


def test_put_post_sets_its_creation_time(service):
    service.operator = OperatorAccess(False, OPERATOR)
    service.votes_rpc.set_created_at.return_value = {"postId": "348", "createdAt": 1700000000}
    response = service.set_created_at(operator_request(
        "/posts/348", json={"createdAt": "2023-11-14T22:13:20Z"}), "348")
    assert (response.status_code, body(response)) == (
        200, {"postId": "348", "createdAt": 1700000000})
    service.votes_rpc.set_created_at.assert_called_once_with("348", 1700000000)


@pytest.mark.parametrize("post_id, document, message", [
    ("a b", {"createdAt": 1}, "postId: " + schemas.ID_RULE),
    ("348", [], "body: must be a JSON object"),
    ("348", {}, "createdAt: is required"),
    ("348", {"createdAt": None}, "createdAt: " + rankings.CREATED_AT_RULE),
    ("348", {"createdAt": "yesterday"}, "createdAt: " + rankings.CREATED_AT_RULE),
    ("348", {"createdAt": -1}, "createdAt: " + rankings.CREATED_AT_RULE),
])
def test_put_post_refuses_bad_input(service, post_id, document, message):
    service.operator = OperatorAccess(False, OPERATOR)
    with pytest.raises(ValidationError) as error:
        service.set_created_at(operator_request("/posts/x", json=document), post_id)
    assert str(error.value) == message
    service.votes_rpc.set_created_at.assert_not_called()


@pytest.mark.parametrize("token, bearer, error", [
    (None, OPERATOR, (403, "OPERATOR_TOKEN_NOT_SET",
                      "this is an operator action: it is refused until "
                      "OPERATOR_TOKEN is set")),
    (OPERATOR, None, (401, "OPERATOR_TOKEN_REQUIRED",
                      "this needs the operator's bearer token")),
    (OPERATOR, "wrong", (401, "OPERATOR_TOKEN_REQUIRED",
                         "this needs the operator's bearer token")),
])
def test_put_post_needs_the_operators_token(service, token, bearer, error):
    service.operator = OperatorAccess(False, token)
    headers = {"Authorization": "Bearer " + bearer} if bearer else {}
    try:
        service.set_created_at(request("/posts/348", "PUT", headers=headers,
                                       json={"createdAt": 1}), "348")
    except Exception as exc:
        response = response_for_exception(exc, ERRORS, logged=True)
    status, code, message = error
    assert (response.status_code, body(response)) == (
        status, {"error": code, "message": message})
    service.votes_rpc.set_created_at.assert_not_called()


def test_put_post_of_a_post_without_votes_is_404(service):
    service.operator = OperatorAccess(False, OPERATOR)
    service.votes_rpc.set_created_at.return_value = None
    with pytest.raises(PostNotFound) as error:
        service.set_created_at(operator_request("/posts/9", json={"createdAt": 1}), "9")
    assert str(error.value) == "post 9 has no votes"


def test_get_vote_is_refused_when_vote_by_get_is_off(service):
    service.policy = VotePolicy(vote_by_get=False)
    try:
        service.vote(request("/vote?postId=348&score=1"))
    except Exception as exc:
        response = response_for_exception(exc, ERRORS, logged=True)
    assert (response.status_code, body(response), response.headers["Allow"]) == (
        405, {"error": "METHOD_NOT_ALLOWED",
              "message": "GET /vote is turned off here (VOTE_BY_GET): POST the vote"},
        "POST")
    assert queued(service) == []
    assert service.vote(request("/vote", "POST", json={
        "postId": "348", "score": 1})).status_code == 202
