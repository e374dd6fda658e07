"""The gateway's copy of recent counts, with the real votes service, broker
and Redis; its clock is the test's, so nothing here depends on timing."""
import time

import pytest
from kombu import Connection, Producer

from harness import rabbit
from services import contracts
from services.gateway.live import LiveCounts
from services.gateway.service import GatewayService
from services.votes import feed
from services.votes.service import VotesService
from tests.integration.test_operating import scrape
from tests.integration.test_pipeline import counts, wait_for_counts

ID_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ -"


@pytest.fixture
def gateway_container(runner_factory, config):
    """The gateway's container, its copy on the test's clock (a list)."""
    runner = runner_factory(config, GatewayService, VotesService)
    runner.start()
    container = next(c for c in runner.containers if c.service_cls is GatewayService)
    live = next(d for d in container.dependencies if isinstance(d, LiveCounts))
    clock = [time.time()]
    live.cache.clock = lambda: clock[0]
    return container, live, clock


@pytest.fixture
def gateway(gateway_container):
    _, live, clock = gateway_container
    return live, clock


def cache_results(web_session):
    got = scrape(web_session.base_url + "metrics")
    return tuple(got.get(("gateway_read_cache_total", ("result", result)), 0)
                 for result in ("hit", "miss"))


def read(web_session, post_id, **params):
    response = web_session.get("/vote-counts", params=dict(postId=post_id, **params))
    return response.status_code, response.json()


def test_counts_are_served_from_the_copy_for_the_ttl(gateway, web_session, redis_client):
    live, clock = gateway
    assert web_session.get("/vote?postId=c1&score=1").status_code == 202
    assert wait_for_counts(web_session, {"c1": counts("c1", 1, 0)}) == {"c1": counts("c1", 1, 0)}
    before = cache_results(web_session)
    # a change the feed never announces: the copy answers the old counts
    redis_client.hincrby(contracts.post_key("c1"), "upvote", 5)
    assert read(web_session, "c1") == (200, counts("c1", 1, 0))
    # myVote reads always go to the votes service
    assert read(web_session, "c1", voterId="ann") == (200, dict(counts("c1", 6, 0), myVote=0))
    clock[0] += 1.001
    assert read(web_session, "c1") == (200, counts("c1", 6, 0))
    assert cache_results(web_session) == (before[0] + 1, before[1] + 1)


def test_a_post_without_votes_is_kept_as_such(gateway, web_session):
    live, clock = gateway
    assert read(web_session, "none")[0] == 404
    before = cache_results(web_session)
    assert read(web_session, "none") == (404, {"error": "POST_NOT_FOUND",
                                               "message": "post none has no votes"})
    assert cache_results(web_session) == (before[0] + 1, before[1])


def test_an_announcement_refreshes_the_copy(gateway, web_session, rabbit_config):
    live, clock = gateway
    assert web_session.get("/vote?postId=c2&score=1").status_code == 202
    assert wait_for_counts(web_session, {"c2": counts("c2", 1, 0)}) == {"c2": counts("c2", 1, 0)}
    stamp = live.cache.entries["c2"][1]
    clock[0] = stamp + 0.6  # both announcements come after their time
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        producer = Producer(connection.channel())
        for at, up in ((stamp - 0.5, 3), (stamp + 0.5, 9)):  # a late one, then a new one
            producer.publish({"posts": [counts("c2", up, 0)], "at": at},
                             exchange=feed.EXCHANGE, routing_key=contracts.COUNTS_CHANGED,
                             serializer="json")
    deadline = time.monotonic() + 10
    while live.cache.entries["c2"][1] == stamp and time.monotonic() < deadline:
        time.sleep(0.02)
    clock[0] = stamp + 1.4  # past the read's TTL, within the announcement's
    assert read(web_session, "c2") == (200, counts("c2", 9, 0))


def test_the_copy_is_emptied_when_the_feed_comes_back(gateway, web_session, rabbit_config):
    """Announcements missed while the feed was away cannot leave counts
    behind: the copy starts empty on each new feed connection."""
    live, clock = gateway
    assert web_session.get("/vote?postId=c3&score=1").status_code == 202
    assert wait_for_counts(web_session, {"c3": counts("c3", 1, 0)}) == {"c3": counts("c3", 1, 0)}
    assert "c3" in live.cache.entries
    # the broker closes every connection of the vhost; the services connect again
    rabbit.rabbitmqctl("close_all_connections", "-p", rabbit_config["vhost"], "test")
    deadline = time.monotonic() + 15
    while "c3" in live.cache.entries and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "c3" not in live.cache.entries
    assert live.connected
    assert wait_for_counts(web_session, {"c3": counts("c3", 1, 0)}) == {"c3": counts("c3", 1, 0)}


def test_a_flood_of_made_up_posts_stays_within_the_copys_size(
        runner_factory, config, web_session):
    """Reads of posts nobody voted on are answered 404 each, and the copy
    holds no more than READ_CACHE_SIZE of them."""
    config["READ_CACHE_SIZE"] = 50
    runner = runner_factory(config, GatewayService, VotesService)
    runner.start()
    container = next(c for c in runner.containers if c.service_cls is GatewayService)
    live = next(d for d in container.dependencies if isinstance(d, LiveCounts))
    for n in range(300):
        assert read(web_session, "ghost-{}".format(n)) == (404, {
            "error": "POST_NOT_FOUND", "message": "post ghost-{} has no votes".format(n)})
    assert len(live.cache.entries) == 50
    assert list(live.cache.entries) == ["ghost-{}".format(n) for n in range(250, 300)]


def test_a_read_the_copy_can_answer_runs_no_worker(gateway_container, web_session):
    """Plain reads of a post the copy holds are answered in the
    connection's thread (counts_from_copy); every other read runs the
    vote_counts worker, and both answer alike."""
    container, live, clock = gateway_container
    workers = []
    spawn_worker = container.spawn_worker

    def counting_spawn(entrypoint, *args, **kwargs):
        workers.append(entrypoint.method_name)
        return spawn_worker(entrypoint, *args, **kwargs)
    container.spawn_worker = counting_spawn

    assert web_session.get("/vote?postId=w1&score=1").status_code == 202
    assert wait_for_counts(web_session, {"w1": counts("w1", 1, 0)}) == {"w1": counts("w1", 1, 0)}
    clock[0] = live.cache.entries["w1"][1]
    before = cache_results(web_session)
    del workers[:]

    def read_with(query):
        response = web_session.get("/vote-counts?" + query)
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        return response.status_code, response.json()

    assert read_with("postId=w1") == (200, counts("w1", 1, 0))  # from the copy
    assert read_with("postId=w1&extra=1") == (200, counts("w1", 1, 0))
    assert read_with("postId=w1&voterId=ann") == (200, dict(counts("w1", 1, 0), myVote=0))
    assert read_with("&postId=w1") == (200, counts("w1", 1, 0))
    assert read_with("postId=w1!") == (400, {
        "error": "VALIDATION_ERROR", "message": "postId: " + ID_RULE})
    assert read_with("postId=nobody") == (404, {
        "error": "POST_NOT_FOUND", "message": "post nobody has no votes"})
    assert read_with("postId=nobody") == (404, {  # the copy's None: a worker's answer
        "error": "POST_NOT_FOUND", "message": "post nobody has no votes"})
    assert workers == ["vote_counts"] * 6
    # due: the connection's thread starts the background read, no worker
    clock[0] += 0.6
    stamp = clock[0]
    assert read_with("postId=w1") == (200, counts("w1", 1, 0))
    deadline = time.monotonic() + 10
    while live.cache.entries["w1"][1] != stamp and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.cache.entries["w1"] == (counts("w1", 1, 0), stamp)  # read again
    assert read_with("postId=w1") == (200, counts("w1", 1, 0))
    assert workers == ["vote_counts"] * 6
    hits, misses = cache_results(web_session)
    # hits: the three plain reads, extra, &postId, the second nobody; misses: nobody
    assert (hits - before[0], misses - before[1]) == (6, 1)
