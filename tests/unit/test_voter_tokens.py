"""Signed voter tokens on the gateway's routes (worker_factory, no broker):
for each kind of bad token the exact 401 and nothing queued."""
import json
import time
from types import SimpleNamespace

import jwt
import pytest
from nameko.exceptions import ConfigurationError
from nameko.testing.services import worker_factory
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.gateway.exceptions import ERRORS
from services.gateway.read_cache import CountsCache
from services.gateway.service import GatewayService
from services.gateway.tokens import Unchecked, VoterTokens, from_config
from services.platform.web import response_for_exception

SECRET = "a-secret-long-enough-for-hs256-32b"
COUNTS = {"postId": "348", "upvote": 2, "downvote": 1, "score": 1, "myVote": 1}


def token(sub="alice", exp=None, aud="votes", key=SECRET, **claims):
    claims.update(sub=sub, aud=aud, exp=exp or int(time.time()) + 300)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm="HS256")


def service(anonymous=True):
    worker = worker_factory(
        GatewayService, voter_tokens=VoterTokens(SECRET, "HS256", "votes", anonymous),
        live=SimpleNamespace(cache=CountsCache(1.0, 100)))
    worker.votes_rpc.counts.return_value = COUNTS
    return worker


def request(path, method="GET", bearer=None, **kwargs):
    headers = {"Authorization": "Bearer " + bearer} if bearer else {}
    return Request(EnvironBuilder(
        path=path, method=method, headers=headers, **kwargs).get_environ())


def answer(call, req):
    try:
        response = call(req)
    except Exception as exc:
        response = response_for_exception(exc, ERRORS, logged=True)
    return response.status_code, json.loads(response.get_data())


def queued(worker):
    return [vote for (votes,), _ in worker.cast_votes.call_args_list for vote in votes]


def test_a_valid_token_votes_as_its_voter():
    worker = service()
    status, body = answer(worker.vote, request(
        "/vote?postId=348&score=1&voterId=alice", bearer=token()))
    assert status == 202
    (vote,) = queued(worker)
    assert (vote["postId"], vote["voterId"]) == ("348", "alice")


def test_a_verified_token_is_kept_until_it_expires(monkeypatch):
    worker = service()
    bearer = token()
    vote = "/vote?postId=348&score=1&voterId=alice"
    for _ in range(2):
        assert answer(worker.vote, request(vote, bearer=bearer))[0] == 202
    assert list(worker.voter_tokens.verified) == [bearer]
    # a token with another signature is verified afresh, and refused
    head, signature = bearer.rsplit(".", 1)
    forged = "{}.{}{}".format(head, "B" if signature[0] == "A" else "A", signature[1:])
    assert answer(worker.vote, request(vote, bearer=forged))[1][
        "error"] == "VOTER_TOKEN_INVALID"
    expires, _ = worker.voter_tokens.verified[bearer]
    monkeypatch.setattr(time, "time", lambda: expires)
    assert answer(worker.vote, request(vote, bearer=bearer)) == (401, {
        "error": "VOTER_TOKEN_EXPIRED", "message": "the voter token has expired"})
    assert worker.voter_tokens.verified == {}
    assert len(queued(worker)) == 2


# tokens are made when the test runs: one made at collection may have
# expired by then
@pytest.mark.parametrize("make_bearer, code, message", [
    (lambda: None, "VOTER_TOKEN_MISSING",
     "a voterId needs an Authorization: Bearer voter token"),
    (lambda: token(exp=int(time.time()) - 10), "VOTER_TOKEN_EXPIRED",
     "the voter token has expired"),
    (lambda: token()[:-3] + "AAA", "VOTER_TOKEN_INVALID",
     "the voter token is malformed or its signature does not match"),
    (lambda: token(key="another-secret-long-enough-for-hs256"), "VOTER_TOKEN_INVALID",
     "the voter token is malformed or its signature does not match"),
    (lambda: "not.a.jwt", "VOTER_TOKEN_INVALID",
     "the voter token is malformed or its signature does not match"),
    (lambda: token(aud="elsewhere"), "VOTER_TOKEN_WRONG_AUDIENCE",
     "the voter token is not for audience 'votes'"),
    (lambda: token(aud=None), "VOTER_TOKEN_WRONG_AUDIENCE",
     "the voter token is not for audience 'votes'"),
    (lambda: token(sub="bob"), "VOTER_TOKEN_WRONG_VOTER",
     "the voter token is for another voter"),
    (lambda: token(posts=["1", "2"]), "VOTER_TOKEN_WRONG_POST",
     "the voter token does not cover post 348"),
    # a string is no list: "348" once covered posts 3, 4 and 8
    *[(lambda posts=posts: token(posts=posts), "VOTER_TOKEN_INVALID",
       "the voter token's posts claim must be a list of post ids")
      for posts in ("348", "3", [348], [True], ["348", ["3"]], [""], ["a" * 65],
                    {"348": 1}, 348)],
])
def test_a_bad_token_is_401_naming_why_and_queues_nothing(make_bearer, code, message):
    bearer = make_bearer()
    worker = service()
    for call, req in [
        (worker.vote, request("/vote?postId=348&score=1&voterId=alice",
                              bearer=bearer)),
        (worker.votes, request("/votes", "POST", bearer=bearer, json={"votes": [
            {"postId": "348", "score": 1, "voterId": "alice"}]})),
    ]:
        assert answer(call, req) == (401, {"error": code, "message": message})
    assert queued(worker) == []


def test_a_token_listing_posts_covers_them():
    worker = service()
    status, _ = answer(worker.votes, request("/votes", "POST", bearer=token(
        posts=["348", "349"]), json={"votes": [
            {"postId": "348", "score": 1, "voterId": "alice"},
            {"postId": "349", "score": -1, "voterId": "alice"}]}))
    assert status == 202
    assert len(queued(worker)) == 2


def test_one_vote_for_another_voter_refuses_the_whole_batch():
    worker = service()
    status, body = answer(worker.votes, request("/votes", "POST", bearer=token(),
                          json={"votes": [
                              {"postId": "348", "score": 1, "voterId": "alice"},
                              {"postId": "349", "score": 1, "voterId": "bob"}]}))
    assert (status, body["error"]) == (401, "VOTER_TOKEN_WRONG_VOTER")
    assert queued(worker) == []


def test_anonymous_votes_follow_the_policy():
    allowed, denied = service(anonymous=True), service(anonymous=False)
    assert answer(allowed.vote, request("/vote?postId=348&score=1"))[0] == 202
    assert answer(denied.vote, request("/vote?postId=348&score=1")) == (
        401, {"error": "VOTER_TOKEN_MISSING",
              "message": "anonymous votes are not accepted"})
    assert queued(denied) == []


def test_my_vote_needs_the_voters_token():
    worker = service()
    path = "/vote-counts?postId=348&voterId=alice"
    assert answer(worker.vote_counts, request(path))[1]["error"] == \
        "VOTER_TOKEN_MISSING"
    assert answer(worker.vote_counts, request(path, bearer=token(sub="bob")))[1][
        "error"] == "VOTER_TOKEN_WRONG_VOTER"
    assert answer(worker.vote_counts, request(path, bearer=token())) == (200, COUNTS)
    worker.votes_rpc.counts.assert_called_once_with("348", "alice")
    # counts without a voter stay public
    assert answer(worker.vote_counts, request("/vote-counts?postId=348"))[0] == 200


def test_settings():
    assert isinstance(from_config({}), Unchecked)
    checker = from_config({"VOTER_TOKEN_SECRET": SECRET})
    assert (checker.algorithm, checker.audience, checker.anonymous) == (
        "HS256", "votes", True)
    assert from_config({"VOTER_TOKEN_PUBLIC_KEY": "k",
                        "VOTER_TOKEN_ALGORITHM": "ES256"}).algorithm == "ES256"
    for bad in [{"VOTER_TOKEN_SECRET": "s", "VOTER_TOKEN_PUBLIC_KEY": "k"},
                {"VOTER_TOKEN_SECRET": "s", "VOTER_TOKEN_ANONYMOUS": "maybe"},
                {"VOTER_TOKEN_PUBLIC_KEY": "k", "VOTER_TOKEN_ALGORITHM": "none"}]:
        with pytest.raises(ConfigurationError):
            from_config(bad)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_public_key_checks_tokens_signed_with_its_private_key(algorithm):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    private = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
               if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1()))
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    # as an environment variable carries it: newlines written as \n
    checker = from_config({"VOTER_TOKEN_PUBLIC_KEY": public_pem.replace("\n", "\\n"),
                           "VOTER_TOKEN_ALGORITHM": algorithm})
    worker = worker_factory(GatewayService, voter_tokens=checker)
    claims = {"sub": "alice", "aud": "votes", "exp": int(time.time()) + 300}
    signed = jwt.encode(claims, private, algorithm=algorithm)
    status, _ = answer(worker.vote, request(
        "/vote?postId=348&score=1&voterId=alice", bearer=signed))
    assert status == 202
    assert [(v["postId"], v["voterId"]) for v in queued(worker)] == [("348", "alice")]
    # the HS256 token of someone holding only a secret is refused
    assert answer(worker.vote, request(
        "/vote?postId=348&score=1&voterId=alice", bearer=token()))[0] == 401
    assert len(queued(worker)) == 1
