"""Rate limits end to end (real RabbitMQ and Redis): exact 429s with their
headers, no 429 changes a count, X-Forwarded-For trusted only from a
trusted proxy, one count shared by two gateway processes, and votes let
through when Redis does not answer. The tests marked ``stores`` run on one
Redis and on a Redis Cluster."""
import eventlet
import pytest
import requests

from harness import rabbit
from harness.process import GATEWAY, START_TIMEOUT, Process, free_port, write_config
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
