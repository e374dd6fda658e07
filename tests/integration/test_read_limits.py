"""The read limit (RATE_LIMIT_READS_PER_ADDRESS) over real processes: a
gateway and a votes service (`nameko run`), RabbitMQ and Redis. Reads of
made-up ids, pages of /posts/top and reads answered from the gateway's
copy all count, each request once; past the limit, 429 with the vote
limit's JSON body and headers."""
import itertools

import pytest
import requests

from harness.process import (
    GATEWAY,
    START_TIMEOUT,
    VOTES,
    Process,
    free_port,
    wait_until,
    write_config,
)
from services import contracts
from tests.integration.test_rate_limits import assert_limited

LIMIT = 20
READS_LIMITED = {
    "error": "RATE_LIMITED",
    "message": "more than 20 reads in 3600 s from this client address",
}


@pytest.fixture
def gateway(config, redis_uri, tmp_path):
    """Both services as processes; the gateway trusts 127.0.0.1 as a proxy,
    so that each test client is named by its X-Forwarded-For."""
    processes = []
    try:
        for name, module, settings in (
                ("votes", VOTES, {}),
                ("gateway", GATEWAY, {"RATE_LIMIT_READS_PER_ADDRESS": "{}/hour".format(LIMIT),
                                      "TRUSTED_PROXIES": "127.0.0.1"})):
            port = free_port()
            path = write_config(tmp_path / (name + ".yml"), config["AMQP_URI"], redis_uri,
                                port, settings=settings)
            processes.append(Process.nameko(name, module, path, tmp_path / (name + ".log"),
                                            port=port).start())
        votes, gateway = processes
        gateway.wait_http("/health", START_TIMEOUT)
        pollers = ("192.0.2.{}".format(n % 250) for n in itertools.count())  # each its own
        wait_until(lambda: get(gateway, "/posts/top?limit=1", next(pollers)).status_code
                   == 200, START_TIMEOUT, "the votes service to answer reads")
        yield gateway
    finally:
        for process in processes:
            process.stop()


def get(gateway, path, client):
    return requests.get("http://127.0.0.1:{}{}".format(gateway.port, path), timeout=30,
                        headers={"X-Forwarded-For": client})


def test_reads_of_made_up_ids_are_limited(gateway):
    # each read counts once, though the inline path leaves it to a worker
    for n in range(LIMIT):
        response = get(gateway, "/vote-counts?postId=nope{}".format(n), "198.51.100.1")
        assert (response.status_code, response.json()["error"]) == (404, "POST_NOT_FOUND")
    for path in ("/vote-counts?postId=nope", "/vote-counts?postId=nope&voterId=v",
                 "/posts/top?limit=1", "/posts/top?sort=hot&limit=1"):
        assert_limited(get(gateway, path, "198.51.100.1"), READS_LIMITED, LIMIT, 3600)
    # another client has its own
    assert get(gateway, "/vote-counts?postId=nope", "198.51.100.2").status_code == 404


def test_a_page_of_top_counts_one_read_per_ten_posts(gateway):
    for _ in range(2):
        response = get(gateway, "/posts/top?limit=100", "198.51.100.3")
        assert (response.status_code, response.json()) == (200, {"posts": []})
    assert_limited(get(gateway, "/posts/top?limit=1", "198.51.100.3"),
                   READS_LIMITED, LIMIT, 3600)
    # 19 pages of 1 to 10 posts, then one of 11 is over
    for limit in range(1, 20):
        assert get(gateway, "/posts/top?limit={}".format(limit % 10 + 1),
                   "198.51.100.4").status_code == 200
    assert_limited(get(gateway, "/posts/top?limit=11", "198.51.100.4"),
                   READS_LIMITED, LIMIT, 3600, remaining=1)
    assert get(gateway, "/vote-counts?postId=nope", "198.51.100.4").status_code == 404


def test_reads_answered_from_the_copy_are_limited(gateway, redis_client):
    response = get(gateway, "/vote?postId=1&score=1", "198.51.100.5")
    assert response.status_code == 202
    wait_until(lambda: redis_client.hget(contracts.post_key("1"), "upvote") == "1", 30,
               "the vote to be applied")
    # the first read puts the post in the gateway's copy; the others are
    # answered from it, without a worker
    counts = {"postId": "1", "upvote": 1, "downvote": 0, "score": 1}
    for _ in range(LIMIT):
        response = get(gateway, "/vote-counts?postId=1", "198.51.100.6")
        assert (response.status_code, response.json()) == (200, counts)
    for _ in range(3):
        assert_limited(get(gateway, "/vote-counts?postId=1", "198.51.100.6"),
                       READS_LIMITED, LIMIT, 3600)
    assert get(gateway, "/vote-counts?postId=1", "198.51.100.7").json() == counts
