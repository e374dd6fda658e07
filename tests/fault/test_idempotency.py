"""Idempotency-Key under faults: clients that retry each vote with its key
until they get a 202 (and once more after it, as a client that lost the
answer would) end with every key counted exactly once, through a broker
outage and through a gateway killed with kill -9."""
import collections
import signal
import time

import eventlet
import requests

from services import rules
from tests.fault.harness import (
    REQUEST_TIMEOUT,
    rabbitmq_stopped,
    settle,
    wait_until,
)

VOTES = 300
CLIENTS = 10
GIVE_UP = 120  # seconds: a vote still without a 202 by then is a failure


class KeyedClients:
    """CLIENTS green threads sharing VOTES keyed votes; vote i goes to post
    k<i> with key key-<i>. Records every answer per vote."""

    def __init__(self, base_url, pause=0.05):
        self.url = base_url + "/vote"
        self.pause = pause
        self.answers = collections.defaultdict(list)  # i -> [(status, voteId)]
        self.accepted = set()
        self._todo = iter(range(VOTES))
        self._threads = []

    def __enter__(self):
        self._threads = [eventlet.spawn(self._client) for _ in range(CLIENTS)]
        return self

    def __exit__(self, *exc_info):
        for thread in self._threads:
            thread.wait()

    def _client(self):
        with requests.Session() as session:
            for i in self._todo:
                give_up = time.monotonic() + GIVE_UP
                while i not in self.accepted and time.monotonic() < give_up:
                    self._send(session, i)
                    time.sleep(self.pause)
                # the answer lost on the way back: the client tries again
                if i in self.accepted:
                    self._send(session, i)

    def _send(self, session, i):
        try:
            response = session.get(
                self.url, params={"postId": "k{}".format(i), "score": score(i)},
                headers={"Idempotency-Key": "key-{}".format(i)},
                timeout=REQUEST_TIMEOUT)
        except requests.RequestException:
            self.answers[i].append((None, None))
            return
        vote_id = response.json().get("voteId") if response.status_code == 202 else None
        self.answers[i].append((response.status_code, vote_id))
        if response.status_code == 202:
            self.accepted.add(i)

    def wait_accepted(self, n, timeout=60):
        wait_until(lambda: len(self.accepted) >= n, timeout,
                   "{} keyed votes accepted".format(n))


def score(i):
    return -1 if i % 3 == 0 else 1


def check_exactly_once(cluster, clients):
    expected = {"k{}".format(i): collections.Counter(
        {"upvote" if score(i) == 1 else "downvote": 1}) for i in range(VOTES)}
    counted = settle(cluster, expected)
    statuses = collections.Counter(
        status for answers in clients.answers.values() for status, _ in answers)
    print("\n[keyed] answers by status {}, posts counted {}".format(
        dict(statuses), len(counted)))
    assert sorted(clients.accepted) == list(range(VOTES))
    assert counted == expected
    for i, answers in clients.answers.items():
        vote_ids = {vote_id for status, vote_id in answers if status == 202}
        assert vote_ids == {rules.key_id("key-{}".format(i))}, (i, answers)
        assert set(status for status, _ in answers) <= {202, 503, None}, (i, answers)
    return statuses


def test_keyed_votes_through_a_rabbitmq_outage(cluster):
    cluster.start_gateway()
    cluster.start_votes()
    with KeyedClients(cluster.base_url) as clients:
        clients.wait_accepted(60)
        with rabbitmq_stopped(cluster):
            time.sleep(3)
    statuses = check_exactly_once(cluster, clients)
    assert statuses[503] > 0  # the outage was felt


def test_keyed_votes_through_a_gateway_kill(cluster):
    gateway = cluster.start_gateway()
    cluster.start_votes()
    with KeyedClients(cluster.base_url) as clients:
        clients.wait_accepted(60)
        gateway.signal(signal.SIGKILL)
        assert gateway.wait_exit(5) is not None
        time.sleep(1)
        cluster.start_gateway()
    statuses = check_exactly_once(cluster, clients)
    assert statuses[None] > 0  # the kill was felt
