"""The gateway alone in a container, on real RabbitMQ: what it queues,
what it refuses, and how it answers when the votes service is absent."""
import json
import socket
import time

import pytest
from amqp.exceptions import NotFound
from kombu import Connection
from nameko.rpc import rpc

from services import contracts, rules
from services.gateway.service import GatewayService
from services.rankings import CREATED_AT_RULE

VOTES_QUEUE = contracts.VOTES_QUEUE
ID_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ -"
SCORE_RULE = "must be 1 or -1 (or 0, with a voterId, to retract)"
OPERATOR_TOKEN = "s3cret-operator"
OPERATOR = {"Authorization": "Bearer " + OPERATOR_TOKEN}


@pytest.fixture
def config(config):
    config["OPERATOR_TOKEN"] = OPERATOR_TOKEN
    return config


@pytest.fixture
def gateway(container_factory, config):
    container = container_factory(GatewayService, config)
    container.start()
    return container


def queued_events(amqp_uri):
    events = []
    with Connection(amqp_uri) as connection:
        channel = connection.default_channel
        while True:
            try:
                message = channel.basic_get(VOTES_QUEUE, no_ack=True)
            except NotFound:  # never declared: nothing was ever published
                return events
            if message is None:
                return events
            assert message.properties["delivery_mode"] == 2
            events.append(json.loads(message.body))


def assert_json(response, status, body):
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"


def test_vote_is_queued_as_a_persistent_event(gateway, web_session, config):
    before = time.time_ns() // 1000
    response = web_session.get("/vote?postId=348&score=1")
    vote_id = response.json()["voteId"]
    assert_json(response, 202, {
        "success": True, "voteId": vote_id, "postId": "348", "score": 1})

    (event,) = queued_events(config["AMQP_URI"])
    (vote,) = event["votes"]
    assert before <= vote.pop("ts") <= time.time_ns() // 1000
    assert vote == {"voteId": vote_id, "postId": "348", "score": 1}
    assert len(event["id"]) == 32


@pytest.mark.parametrize("send, fields", [
    (lambda s: s.post("/vote", json={"postId": "0348", "score": -1}),
     {"postId": "0348", "score": -1}),
    (lambda s: s.post("/vote", data={"postId": "7", "score": "-1"}),
     {"postId": "7", "score": -1}),
    (lambda s: s.post("/vote?postId=7&score=1"), {"postId": "7", "score": 1}),
    (lambda s: s.post("/vote", json={"postId": "7", "score": 0, "voterId": "u"}),
     {"postId": "7", "score": 0, "voterId": "u"}),
])
def test_vote_by_post(gateway, web_session, config, send, fields):
    response = send(web_session)
    assert response.status_code == 202
    (event,) = queued_events(config["AMQP_URI"])
    assert {k: v for k, v in event["votes"][0].items()
            if k not in ("ts", "voteId")} == fields


def test_batch_is_one_event(gateway, web_session, config):
    votes = [{"postId": str(i % 7), "score": 1 if i % 3 else -1} for i in range(1000)]
    response = web_session.post("/votes", json={"votes": votes})
    assert_json(response, 202, {"success": True, "accepted": 1000})

    (event,) = queued_events(config["AMQP_URI"])
    assert [(v["postId"], v["score"]) for v in event["votes"]] == [
        (v["postId"], v["score"]) for v in votes]
    stamps = [v["ts"] for v in event["votes"]]
    assert stamps == sorted(set(stamps))  # distinct, in request order


BAD_REQUESTS = [
    ("GET", "/vote", {}, 400, "postId: is required"),
    ("GET", "/vote?postId=348", {}, 400, "score: is required"),
    # the seed's unquoted-& mistake: the shell drops '&score=1'
    ("GET", "/vote?postId=348", {}, 400, "score: is required"),
    ("GET", "/vote?postId=348&score=2", {}, 400, "score: " + SCORE_RULE),
    ("GET", "/vote?postId=348&score=%2B1", {}, 400, "score: " + SCORE_RULE),
    ("GET", "/vote?postId=348&score=1.0", {}, 400, "score: " + SCORE_RULE),
    ("GET", "/vote?postId=348&score=", {}, 400, "score: " + SCORE_RULE),
    ("GET", "/vote?postId=348&score=true", {}, 400, "score: " + SCORE_RULE),
    ("GET", "/vote?postId=348&score=0", {}, 400,
     "score: 0 retracts a vote and needs a voterId"),
    ("GET", "/vote?postId=&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=" + "x" * 65 + "&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=" + "x" * 8000 + "&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=%00&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=%FF%FE&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=%E2%82%AC&score=1", {}, 400, "postId: " + ID_RULE),
    ("GET", "/vote?postId=1&postId=2&score=1", {}, 400, "postId: given more than once"),
    ("GET", "/vote?postId=1&score=1&voterId=a%20b", {}, 400, "voterId: " + ID_RULE),
    ("POST", "/vote", {"data": b"{", "headers": {"Content-Type": "application/json"}},
     400, "body: is not valid JSON"),
    ("POST", "/vote", {"data": b"\xff", "headers": {"Content-Type": "application/json"}},
     400, "body: is not valid JSON"),
    ("POST", "/vote", {"json": [1]}, 400, "body: must be a JSON object"),
    ("POST", "/vote", {"json": {"postId": "1", "score": "1"}}, 400, "score: " + SCORE_RULE),
    ("POST", "/vote", {"json": {"postId": "1", "score": True}}, 400, "score: " + SCORE_RULE),
    ("POST", "/vote", {"json": {"postId": 1, "score": 1}}, 400, "postId: " + ID_RULE),
    ("POST", "/vote", {"data": {"postId": "1", "score": "x"}}, 400, "score: " + SCORE_RULE),
    ("POST", "/votes", {"json": {"votes": []}}, 400,
     "votes: must be a list of 1 to 1000 votes"),
    ("POST", "/votes", {"json": {"votes": [{"postId": "1", "score": 1}] * 1001}}, 400,
     "votes: must be a list of 1 to 1000 votes"),
    ("POST", "/votes", {"json": {"votes": [{"postId": "1", "score": 1},
                                           {"postId": "2", "score": 9}]}}, 400,
     "votes[1].score: " + SCORE_RULE),
    ("POST", "/votes", {"data": b"x", "headers": {"Content-Type": "application/json"}},
     400, "body: is not valid JSON"),
    ("GET", "/vote-counts", {}, 400, "postId: is required"),
    ("GET", "/vote-counts?postId=a/b", {}, 400, "postId: " + ID_RULE),
    ("GET", "/posts/top?limit=0", {}, 400, "limit: must be an integer from 1 to 100"),
    ("GET", "/posts/top?limit=abc", {}, 400, "limit: must be an integer from 1 to 100"),
    ("GET", "/posts/top?sort=new", {}, 400, "sort: must be one of top, best, controversial, hot"),
    ("GET", "/posts/top?sort=hot&after=xyz", {}, 400, "after: is not a cursor from this API"),
    ("GET", "/vote?postId=1&score=1&createdAt=tomorrow", {}, 400,
     "createdAt: " + CREATED_AT_RULE),
    ("POST", "/votes", {"json": {"votes": [{"postId": "1", "score": 1, "createdAt": [1]}]}},
     400, "votes[0].createdAt: " + CREATED_AT_RULE),
    # the operator's, with the operator's token
    ("PUT", "/posts/348", {"json": {"createdAt": "2026-12-06"}, "headers": OPERATOR}, 400,
     "createdAt: " + CREATED_AT_RULE),
    ("PUT", "/posts/%E2%82%AC", {"json": {"createdAt": 1}, "headers": OPERATOR}, 400,
     "postId: " + ID_RULE),
    ("PUT", "/posts/348", {"data": b"{", "headers": dict(
        OPERATOR, **{"Content-Type": "application/json"})},
     400, "body: is not valid JSON"),
] + [
    (method, path, dict(body, headers={"Idempotency-Key": key}), 400,
     "Idempotency-Key: must be 1-128 visible ASCII characters")
    for key in ("", "a b", "k" * 129, "caf\xe9", "tab\there")
    for method, path, body in (
        ("GET", "/vote?postId=348&score=1", {}),
        ("POST", "/vote", {"json": {"postId": "348", "score": 1}}),
        ("POST", "/votes", {"json": {"votes": [{"postId": "348", "score": 1}]}}),
    )
]


@pytest.mark.parametrize("method, url, kwargs, status, message", BAD_REQUESTS)
def test_bad_input_gets_json_error_and_queues_nothing(
        gateway, web_session, config, method, url, kwargs, status, message):
    response = web_session.request(method, url, **kwargs)
    assert_json(response, status, {"error": "VALIDATION_ERROR", "message": message})
    assert queued_events(config["AMQP_URI"]) == []


@pytest.mark.parametrize("method, url, kwargs, status, body, allow", [
    ("GET", "/nope", {}, 404, {"error": "NOT_FOUND", "message": "no such resource"}, None),
    ("GET", "/index.html", {}, 404, {"error": "NOT_FOUND", "message": "no such resource"}, None),
    ("POST", "/", {}, 405,
     {"error": "METHOD_NOT_ALLOWED", "message": "method not allowed"}, "GET"),
    ("GET", "/vote?postId=" + "x" * 100000 + "&score=1", {}, 414,
     {"error": "URI_TOO_LONG", "message": "request line is longer than 8192 bytes"},
     None),
    ("DELETE", "/vote", {}, 405,
     {"error": "METHOD_NOT_ALLOWED", "message": "method not allowed"}, "GET, POST"),
    ("GET", "/votes", {}, 405,
     {"error": "METHOD_NOT_ALLOWED", "message": "method not allowed"}, "POST"),
    ("POST", "/votes", {"data": b"x" * (1024 * 1024 + 1),
                        "headers": {"Content-Type": "application/json"}}, 413,
     {"error": "PAYLOAD_TOO_LARGE",
      "message": "request body is larger than 1048576 bytes"}, None),
    ("POST", "/vote", {"data": b"x" * (1024 * 1024 + 1),
                       "headers": {"Content-Type": "application/json"}}, 413,
     {"error": "PAYLOAD_TOO_LARGE",
      "message": "request body is larger than 1048576 bytes"}, None),
])
def test_http_errors_are_json(gateway, web_session, config, method, url, kwargs,
                              status, body, allow):
    response = web_session.request(method, url, **kwargs)
    assert_json(response, status, body)
    assert response.headers.get("Allow") == allow
    assert queued_events(config["AMQP_URI"]) == []


def test_reads_fail_fast_without_votes_service(gateway, web_session):
    started = time.monotonic()
    response = web_session.get("/vote-counts?postId=348")
    elapsed = time.monotonic() - started
    assert_json(response, 503, {
        "error": "SERVICE_UNAVAILABLE",
        "message": "the votes service did not answer in time"})
    assert response.headers["Retry-After"] == "1"
    assert 1.0 <= elapsed < 3.0


class FakeVotes:
    """Stands in for the votes service over real RPC."""
    name = "votes"

    @rpc
    def get_counts_many(self, queries):
        return [None if post_id == "missing" else
                {"postId": post_id, "upvote": 2, "downvote": 1, "score": 1}
                for post_id, _ in queries]

    @rpc
    def top(self, limit):
        return [{"postId": "1", "upvote": limit, "downvote": 0, "score": limit}]


def test_reads_through_rpc(gateway, container_factory, config, web_session):
    container_factory(FakeVotes, config).start()

    assert_json(web_session.get("/vote-counts?postId=348"), 200, {
        "postId": "348", "upvote": 2, "downvote": 1, "score": 1})
    assert_json(web_session.get("/vote-counts?postId=missing"), 404, {
        "error": "POST_NOT_FOUND", "message": "post missing has no votes"})
    assert_json(web_session.get("/posts/top?limit=3"), 200, {
        "posts": [{"postId": "1", "upvote": 3, "downvote": 0, "score": 3}]})


@pytest.mark.parametrize("raw, status, body", [
    (b"GARBAGE\r\n\r\n", 400,
     {"error": "BAD_REQUEST", "message": "Bad request syntax ('GARBAGE')"}),
    (b"GET /vote HTTP/9.9\r\n\r\n", 400,
     {"error": "BAD_REQUEST", "message": "Invalid HTTP version (9.9)"}),
    (b"GET /vote?postId=" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n", 414,
     {"error": "URI_TOO_LONG", "message": "request line is longer than 8192 bytes"}),
])
def test_unparseable_requests_get_json(gateway, web_port, config, raw, status, body):
    with socket.create_connection(("127.0.0.1", web_port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode()
    assert b"Content-Type: application/json" in head
    assert json.loads(payload) == body
    assert queued_events(config["AMQP_URI"]) == []


KEY_REUSED = {"error": "IDEMPOTENCY_KEY_REUSED",
              "message": "this Idempotency-Key was used for another request"}


def test_keyed_vote_answers_every_try_alike(gateway, web_session, config):
    key = {"Idempotency-Key": "3f6c1f1e-order-17"}
    answers = [web_session.get("/vote?postId=348&score=1&voterId=ann", headers=key)
               for _ in range(3)]
    answers.append(web_session.post(
        "/vote", json={"postId": "348", "score": 1, "voterId": "ann"}, headers=key))
    key_id = rules.key_id("3f6c1f1e-order-17")
    for response in answers:
        assert_json(response, 202, {"success": True, "voteId": key_id,
                                    "postId": "348", "score": 1, "voterId": "ann"})
    # the tries after the first were answered from memory: one event
    (event,) = queued_events(config["AMQP_URI"])
    (vote,) = event["votes"]
    del vote["ts"]
    assert vote == {"voteId": key_id, "postId": "348", "score": 1, "voterId": "ann",
                    "key": key_id, "fp": rules.fingerprint([("348", 1, "ann")])}


def test_keyed_batch(gateway, web_session, config):
    key = {"Idempotency-Key": "batch-1"}
    body = {"votes": [{"postId": "a", "score": 1}, {"postId": "b", "score": -1}]}
    for _ in range(2):
        assert_json(web_session.post("/votes", json=body, headers=key), 202,
                    {"success": True, "accepted": 2})
    (event,) = queued_events(config["AMQP_URI"])
    key_id = rules.key_id("batch-1")
    assert [(v["voteId"], v["key"]) for v in event["votes"]] == [
        (key_id + "-0", key_id), (key_id + "-1", key_id)]


@pytest.mark.parametrize("second", [
    lambda s, key: s.get("/vote?postId=348&score=-1", headers=key),
    lambda s, key: s.get("/vote?postId=349&score=1", headers=key),
    lambda s, key: s.get("/vote?postId=348&score=1&voterId=bob", headers=key),
    lambda s, key: s.post("/votes", json={"votes": [{"postId": "348", "score": 1}] * 2},
                          headers=key),
])
def test_a_key_reused_for_another_vote_is_refused(gateway, web_session, config, second):
    key = {"Idempotency-Key": "k-reused"}
    assert web_session.get("/vote?postId=348&score=1", headers=key).status_code == 202
    assert_json(second(web_session, key), 422, KEY_REUSED)
    assert len(queued_events(config["AMQP_URI"])) == 1
