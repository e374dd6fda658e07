"""Rate limits end to end (real RabbitMQ and Redis): exact 429s with their
headers, no 429 changes a count, X-Forwarded-For trusted only from a
trusted proxy, one count shared by two gateway processes, and votes let
through when Redis does not answer. The tests marked ``stores`` run on one
Redis and on a Redis Cluster."""
import collections
import itertools
import json
import signal

import eventlet
import pytest
import redis
import requests

from harness import rabbit
from harness.process import (
    GATEWAY,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
    write_config,
)
from harness.redis_server import RedisServer
from services import contracts
from services.gateway.service import GatewayService
from services.votes.service import VotesService
from tests.conftest import WebSession
from tests.integration.test_operating import scrape
from tests.integration.test_pipeline import counts, wait_for_counts
from tests.integration.test_voter_tokens import bearer, token

ADDRESS_LIMITED = {
    "error": "RATE_LIMITED",
    "message": "more than 3 votes in 3600 s from this client address",
}


@pytest.fixture
def config(config):
    config["RATE_LIMIT_PER_ADDRESS"] = "3/hour"
    return config


def settled(web_session, rabbit_config, expected):
    """The counts once the votes queue is empty: nothing left to count."""
    assert wait_for_counts(web_session, expected) == expected
    assert rabbit.queue_messages(rabbit_config["vhost"], contracts.VOTES_QUEUE) == 0
    return wait_for_counts(web_session, expected, timeout=0)


def assert_limited(response, body, limit, window, remaining=0):
    assert (response.status_code, response.json()) == (429, body)
    headers = response.headers
    reset = int(headers["Retry-After"])
    assert 1 <= reset <= window
    assert {name: headers[name] for name in (
        "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
        "RateLimit-Policy", "Cache-Control")} == {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
        "RateLimit-Policy": "{};w={}".format(limit, window),
        "Cache-Control": "no-store",
    }


@pytest.mark.stores
def test_address_limit_counts_each_vote_and_no_429_is_counted(
        services, web_session, rabbit_config, redis_client):
    assert web_session.get("/vote?postId=1&score=1").status_code == 202
    # a batch of 3 with 2 left is refused whole
    batch = {"votes": [{"postId": "1", "score": 1}] * 3}
    assert_limited(web_session.post("/votes", json=batch), ADDRESS_LIMITED,
                   3, 3600, remaining=2)
    assert web_session.post("/votes", json={"votes": batch["votes"][:2]}) \
        .status_code == 202
    for _ in range(3):
        assert_limited(web_session.get("/vote?postId=1&score=-1"),
                       ADDRESS_LIMITED, 3, 3600)
        assert_limited(web_session.post("/vote", json={"postId": "1", "score": -1}),
                       ADDRESS_LIMITED, 3, 3600)
    assert settled(web_session, rabbit_config, {"1": counts("1", 3, 0)}) == {
        "1": counts("1", 3, 0)}
    # reads are not limited
    assert web_session.get("/vote-counts?postId=1").status_code == 200
    # one key for the limit and the address, expiring with its window
    key = contracts.rate_key("address", 3600, "127.0.0.1")
    assert int(redis_client.get(key)) == 3
    assert 0 < redis_client.pttl(key) <= 3600 * 1000


def test_a_spoofed_forwarded_for_does_not_escape(services, web_session, rabbit_config):
    for n in range(6):
        response = web_session.get("/vote?postId=2&score=1", headers={
            "X-Forwarded-For": "203.0.113.{}".format(n)})
        if n < 3:
            assert response.status_code == 202
        else:
            assert_limited(response, ADDRESS_LIMITED, 3, 3600)
    assert settled(web_session, rabbit_config, {"2": counts("2", 3, 0)}) == {
        "2": counts("2", 3, 0)}


@pytest.mark.parametrize("trusted", ["127.0.0.1", "127.0.0.0/8, 10.0.0.0/8"])
def test_a_trusted_proxy_names_the_client(
        runner_factory, config, web_session, rabbit_config, trusted):
    config["TRUSTED_PROXIES"] = trusted
    runner_factory(config, GatewayService, VotesService).start()

    def vote(forwarded):
        return web_session.get("/vote?postId=3&score=1",
                               headers={"X-Forwarded-For": forwarded})
    # each client its own allowance; what a client writes before the
    # proxy's entry is ignored
    for _ in range(3):
        assert vote("198.51.100.7").status_code == 202
    assert_limited(vote("198.51.100.7"), ADDRESS_LIMITED, 3, 3600)
    assert_limited(vote("192.0.2.1, 198.51.100.7"), ADDRESS_LIMITED, 3, 3600)
    assert vote("198.51.100.8").status_code == 202
    # an IPv6 client is counted by its /64
    for host in range(1, 4):
        assert vote("2001:db8:0:1::{}".format(host)).status_code == 202
    assert_limited(vote("2001:db8:0:1::99"), ADDRESS_LIMITED, 3, 3600)
    assert settled(web_session, rabbit_config, {"3": counts("3", 7, 0)}) == {
        "3": counts("3", 7, 0)}


@pytest.mark.stores
def test_voter_limit(runner_factory, config, web_session, rabbit_config):
    config.update(RATE_LIMIT_PER_ADDRESS=None, RATE_LIMIT_PER_VOTER="2/minute",
                  VOTER_TOKEN_SECRET="a-secret-long-enough-for-hs256-32b")
    runner_factory(config, GatewayService, VotesService).start()
    ann, bob = bearer(token("ann")), bearer(token("bob"))
    for post in ("4", "5"):
        assert web_session.get("/vote", params={
            "postId": post, "score": 1, "voterId": "ann"}, headers=ann).status_code == 202
    response = web_session.post("/votes", json={"votes": [
        {"postId": "6", "score": 1, "voterId": "ann"}]}, headers=ann)
    assert_limited(response, {
        "error": "RATE_LIMITED",
        "message": "more than 2 votes in 60 s from this voter"}, 2, 60)
    # another voter, and anonymous votes, are not held back by ann's limit
    assert web_session.get("/vote", params={
        "postId": "6", "score": 1, "voterId": "bob"}, headers=bob).status_code == 202
    assert web_session.get("/vote?postId=6&score=1").status_code == 202
    expected = {"4": counts("4", 1, 0), "5": counts("5", 1, 0), "6": counts("6", 2, 0)}
    assert settled(web_session, rabbit_config, expected) == expected


def test_redis_down_lets_votes_through(runner_factory, config, web_session):
    config["REDIS_URIS"] = {"votes": "redis://127.0.0.1:{}/0".format(free_port())}
    runner_factory(config, GatewayService).start()
    before = scrape(web_session.base_url + "metrics")
    for _ in range(5):
        assert web_session.get("/vote?postId=7&score=1").status_code == 202
    after = scrape(web_session.base_url + "metrics")
    key = ("gateway_rate_limit_errors_total",)
    assert after[key] - before.get(key, 0) == 5


class LeasedCount:
    """The rule of leases, written out: an accepted call to Redis counts
    the votes and, unless it is the identity's first in the window, a
    lease of 1% of the headroom left after them (at most 50), which later
    votes of this process spend without asking."""

    def __init__(self, limit):
        self.limit, self.count, self.lease = limit, 0, 0

    def take(self, cost):
        if self.lease >= cost:
            self.lease -= cost
        elif self.count + cost <= self.limit:
            grant = 0
            if self.count > 0:
                grant = max(0, min(50, (self.limit - self.count - cost) // 100))
            self.count += cost + grant
            self.lease += grant
        else:
            return False
        return True


@pytest.mark.stores
def test_a_busy_client_spends_leases_counted_ahead(
        runner_factory, config, web_session, rabbit_config, redis_client):
    """With 1,000 an hour, the count in Redis runs ahead of the votes by
    the lease not yet spent; every vote up to the 1,000th is accepted."""
    config["RATE_LIMIT_PER_ADDRESS"] = "1000/hour"
    runner_factory(config, GatewayService, VotesService).start()
    key = contracts.rate_key("address", 3600, "127.0.0.1")
    rule = LeasedCount(1000)
    for n in range(301):
        assert rule.take(1)
        assert web_session.get("/vote?postId=l&score=1").status_code == 202, n
        if n < 2:  # the first vote takes no lease, the second 9
            assert int(redis_client.get(key)) == rule.count == (1, 11)[n]
    assert (rule.count, rule.lease) == (304, 3)
    assert int(redis_client.get(key)) == 304
    batch = {"votes": [{"postId": "l", "score": 1}] * 100}
    for _ in range(6):
        assert rule.take(100)
        assert web_session.post("/votes", json=batch).status_code == 202
    assert int(redis_client.get(key)) == rule.count
    accepted = 901
    while True:
        response = web_session.get("/vote?postId=l&score=1")
        if response.status_code != 202:
            break
        accepted += 1
    assert accepted == 1000
    assert int(redis_client.get(key)) == 1000
    assert_limited(response, {
        "error": "RATE_LIMITED",
        "message": "more than 1000 votes in 3600 s from this client address"}, 1000, 3600)
    assert settled(web_session, rabbit_config, {"l": counts("l", 1000, 0)}) == {
        "l": counts("l", 1000, 0)}


@pytest.mark.parametrize("limit, votes", [(10, 40), (300, 500)])
def test_two_gateway_processes_share_one_limit(
        runner_factory, config, rabbit_config, redis_uri, tmp_path, limit, votes):
    runner_factory(config, VotesService).start()
    gateways = []
    for n in range(2):
        port = free_port()
        path = write_config(tmp_path / "gateway-{}.yml".format(n),
                            config["AMQP_URI"], redis_uri, port,
                            settings={"RATE_LIMIT_PER_ADDRESS": "{}/hour".format(limit)})
        gateways.append(Process.nameko("gateway-{}".format(n), GATEWAY, path,
                                       tmp_path / "gateway-{}.log".format(n),
                                       port=port).start())
    try:
        for gateway in gateways:
            gateway.wait_http("/health", START_TIMEOUT)

        def vote(n):
            url = "http://127.0.0.1:{}/vote?postId=8&score=1".format(
                gateways[n % 2].port)
            return requests.get(url, timeout=30).status_code
        # with 300 an hour each process also spends leases (of up to 2)
        statuses = list(eventlet.GreenPool(20).imap(vote, range(votes)))
        assert (statuses.count(202), statuses.count(429)) == (limit, votes - limit)
        session = WebSession("http://127.0.0.1:{}/".format(gateways[0].port))
        assert settled(session, rabbit_config, {"8": counts("8", limit, 0)}) == {
            "8": counts("8", limit, 0)}
    finally:
        for gateway in gateways:
            gateway.stop()


FLOODERS = 120


@pytest.fixture
def gateway_process(config, redis_uri, tmp_path):
    """start(settings, redis_uri=...) -> a gateway `nameko run` process on
    the test's vhost, stopped at the end."""
    started = []

    def start(settings, uri=redis_uri):
        port = free_port()
        path = write_config(tmp_path / "gateway.yml", config["AMQP_URI"], uri, port,
                            settings=settings)
        gateway = Process.nameko("gateway", GATEWAY, path, tmp_path / "gateway.log",
                                 port=port).start()
        started.append(gateway)
        gateway.wait_http("/health", START_TIMEOUT)
        gateway.session = WebSession("http://127.0.0.1:{}/".format(port))
        return gateway
    yield start
    for gateway in started:
        gateway.stop()


def batch(voters, fill=None):
    """A batch of one vote per voter (``fill`` votes, when more, by the last)."""
    votes = [{"postId": "f", "score": 1, "voterId": "v{}".format(n)} for n in range(voters)]
    votes += [votes[-1]] * ((fill or voters) - voters)
    return {"votes": votes}


TOO_MANY_VOTERS = {"error": "VALIDATION_ERROR",
                   "message": "votes: name at most 100 different voterIds in one request"}
LIMITS_UNAVAILABLE = {"error": "SERVICE_UNAVAILABLE",
                      "message": "the rate limits could not be checked in time; try again"}


def test_a_flood_of_many_voter_batches_does_not_open_the_limits(
        gateway_process, rabbit_config, redis_client):
    """Batches naming 1,000 voters each, sent from ever new addresses as
    fast as 120 clients can, while clients already over their limit (in
    Redis: as another gateway process counted them) keep voting: none of
    it is let through. Before, each refused batch cost Redis its 1,001
    keys, the limiter's calls timed out and it let every vote through."""
    gateway = gateway_process({"RATE_LIMIT_PER_ADDRESS": "5/hour",
                               "RATE_LIMIT_PER_VOTER": "1000/hour",
                               "TRUSTED_PROXIES": "127.0.0.1",
                               "RATE_LIMIT_READS_PER_ADDRESS": 0})
    url = gateway.session.base_url
    victims = ["203.0.113.{}".format(n) for n in range(1, 41)]
    for victim in victims:
        redis_client.set(contracts.rate_key("address", 3600, victim), 5, px=3600 * 1000)
    flooding = [True]
    answers = collections.Counter()
    addresses = itertools.count()

    # most name 1,000 voters; some 100 (as many as may be named), from
    # fresh addresses over their limit of 5 at once
    bodies = [json.dumps(batch(100)).encode(), json.dumps(batch(1000)).encode()]

    def flood(n):
        session = requests.Session()
        while flooding[0]:
            address = next(addresses)
            many = int(n % 6 != 0)
            response = session.post(url + "votes", data=bodies[many], timeout=30, headers={
                "Content-Type": "application/json",
                "X-Forwarded-For": "198.18.{}.{}".format(address // 250, address % 250)})
            answers[many, response.status_code, response.text] += 1
        session.close()

    pool = eventlet.GreenPool(FLOODERS)
    for n in range(FLOODERS):
        pool.spawn(flood, n)
    try:
        wait_until(lambda: sum(answers.values()) >= FLOODERS, 60, "the flood to start")
        refused = collections.Counter()
        for victim in victims:
            response = gateway.session.get("/vote?postId=v&score=1",
                                           headers={"X-Forwarded-For": victim})
            if response.status_code == 429:
                assert_limited(response, ADDRESS_LIMITED_5, 5, 3600)
            refused[response.status_code, response.text] += 1
            if sum(refused.values()) >= 8 and sum(answers.values()) >= 800:
                break
    finally:
        flooding[0] = False
        pool.waitall()
    # nothing let through: no vote queued, no victim's count changed
    assert [status for _, status, _ in answers if status == 202] == []
    assert [status for status, _ in refused if status == 202] == []
    assert rabbit.queue_messages(rabbit_config["vhost"], contracts.VOTES_QUEUE) == 0
    for victim in victims:
        assert redis_client.get(contracts.rate_key("address", 3600, victim)) == "5"
    # each victim refused by its limit, or with a 503 while the limiter was
    # slow to answer (the gateway's CPU spent on the flood), never let in
    assert set(refused) <= {(429, json.dumps(ADDRESS_LIMITED_5, separators=(",", ":"))),
                            (503, json.dumps(LIMITS_UNAVAILABLE, separators=(",", ":")))}
    # the flood: 1,000 voters refused at once, before any check; the
    # 100-vote batches by their fresh address's limit of 5 (or a 503)
    assert {(many, status, text) for many, status, text in answers if many} == {
        (1, 400, json.dumps(TOO_MANY_VOTERS, separators=(",", ":")))}
    assert {(status, json.loads(text)["error"]) for many, status, text in answers
            if not many} <= {(429, "RATE_LIMITED"), (503, "SERVICE_UNAVAILABLE")}


ADDRESS_LIMITED_5 = {
    "error": "RATE_LIMITED",
    "message": "more than 5 votes in 3600 s from this client address",
}


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own, which answers BUSY to others once
    a script has run for 100 ms."""
    server = RedisServer(tmp_path, "--busy-reply-threshold", "100")
    server.start()
    yield server
    server.process.signal(signal.SIGCONT)
    server.kill()


def test_a_busy_redis_refuses_the_vote_and_lets_nothing_through(
        gateway_process, private_redis):
    """Redis up but not answering the check (here: BUSY, a script running
    on): that vote is refused with 503 and Retry-After, the limit holds.
    Before, any failure let every vote through for a second."""
    gateway = gateway_process({"RATE_LIMIT_PER_ADDRESS": "5/hour"}, private_redis.uri)
    session = gateway.session
    assert session.get("/vote?postId=b&score=1").status_code == 202
    blocker = redis.Redis.from_url(private_redis.uri)  # no timeout: it waits for the script
    running = eventlet.spawn(blocker.eval, "while true do end", 0)

    def busy():
        try:
            private_redis.client().ping()
        except redis.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False
    wait_until(busy, 10, "Redis to answer BUSY", interval=0.05)
    try:
        for _ in range(3):
            response = session.get("/vote?postId=b&score=1")
            assert (response.status_code, response.json()) == (503, LIMITS_UNAVAILABLE)
            assert response.headers["Retry-After"] == "1"
    finally:
        private_redis.client().script_kill()
        with pytest.raises(redis.ResponseError):
            running.wait()
    # the refused votes took nothing: four more, then the limit
    for _ in range(4):
        assert session.get("/vote?postId=b&score=1").status_code == 202
    assert_limited(session.get("/vote?postId=b&score=1"), ADDRESS_LIMITED_5, 5, 3600)


def test_a_frozen_redis_is_an_outage_and_votes_go_through(gateway_process, private_redis):
    """No answer at all, not even to a PING (the server stopped): the
    limiter fails open, as when Redis refuses connections; a client this
    process saw refused is still refused until its window ends."""
    gateway = gateway_process({"RATE_LIMIT_PER_ADDRESS": "2/hour",
                               "TRUSTED_PROXIES": "127.0.0.1"}, private_redis.uri)

    def vote(client):
        return gateway.session.get("/vote?postId=z&score=1",
                                   headers={"X-Forwarded-For": client})
    for _ in range(2):
        assert vote("198.51.100.1").status_code == 202
    assert_limited(vote("198.51.100.1"), ADDRESS_LIMITED_2, 2, 3600)
    private_redis.process.signal(signal.SIGSTOP)
    try:
        assert_limited(vote("198.51.100.1"), ADDRESS_LIMITED_2, 2, 3600)
        for _ in range(3):
            response = vote("198.51.100.2")
            assert (response.status_code, response.json()["success"]) == (202, True)
    finally:
        private_redis.process.signal(signal.SIGCONT)


ADDRESS_LIMITED_2 = {
    "error": "RATE_LIMITED",
    "message": "more than 2 votes in 3600 s from this client address",
}
