"""The services on a private Redis Cluster (three masters, a replica
each) while it fails over (its nodes started again, or not) and while it
is resharded, under load.

Votes go in as POST /votes batches, each vote with a voter of its own;
afterwards every vote answered 202 must be counted exactly once, with its
voter's entry, and the leaderboard must be the counts, sorted. Only this
test's cluster, vhost and processes are touched."""
import collections
import threading
import time

import eventlet
import pytest
import redis
import requests

from services import contracts
from tests.conftest import start_redis_cluster
from tests.fault.harness import (
    DRAIN_TIMEOUT,
    REQUEST_TIMEOUT,
    Cluster,
    Load,
    wait_until,
)

POSTS = 1000
BATCH = 20          # votes per POST /votes
CLIENTS = 8
RATE = 1000         # votes per second at most
TOP = 100


class OnRedisCluster(Cluster):
    """The fault harness's services, on a Redis Cluster."""

    def counted(self):
        """As the harness's, asked again when the test's own client loses
        its connection in a failover (Sentinel closes the clients of the
        servers whose role it changes)."""
        for attempt in range(3):
            try:
                return super().counted()
            except redis.ConnectionError:
                if attempt == 2:
                    raise
        return None

    def close(self, show_logs=False):
        for process in self.processes:
            process.kill()
        self.redis.close()
        if show_logs:
            for process in self.processes + self.redis_server.nodes:
                print("\n----- {} ({}) last lines -----\n{}".format(
                    process.label, process.log_path, process.tail()))


@pytest.fixture
def redis_servers(tmp_path):
    servers = start_redis_cluster(tmp_path)
    yield servers
    servers.stop()


def services_on(request, tmp_path, rabbit_config, servers):
    """A services fixture's body: the votes service and a gateway on
    ``servers`` (harness.redis_cluster or harness.redis_sentinel), their
    logs shown if the test failed."""
    cluster = OnRedisCluster(tmp_path, rabbit_config["AMQP_URI"],
                             rabbit_config["vhost"], servers)
    cluster.votes = cluster.start_votes()
    cluster.start_gateway()
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)


@pytest.fixture
def services(request, tmp_path, rabbit_config, redis_servers):
    yield from services_on(request, tmp_path, rabbit_config, redis_servers)


class BatchLoad(Load):
    """The fault harness's load, a POST /votes batch of BATCH votes per
    step: ``total`` votes at most, RATE a second; vote i goes to post
    p<i % POSTS>, by voter v<i>, a downvote every third. Every answer is
    kept in ``batches``."""

    def __init__(self, base_url, total):
        super().__init__([base_url], clients=CLIENTS, limit=total // BATCH,
                         rate=RATE / BATCH)
        self.url = base_url + "/votes"
        self.total = total
        self.batches = []  # (status, [(post, voter, score), ...])

    def sent(self):
        return sum(len(votes) for _, votes in self.batches)

    def _vote(self, session, batch):
        first = batch * BATCH
        votes = [("p{}".format(i % POSTS), "v{}".format(i), -1 if i % 3 == 0 else 1)
                 for i in range(first, first + BATCH)]
        body = {"votes": [{"postId": p, "voterId": v, "score": s} for p, v, s in votes]}
        try:
            status = session.post(self.url, json=body, timeout=REQUEST_TIMEOUT).status_code
        except requests.RequestException as exc:
            status = repr(exc)
        self.batches.append((status, votes))

    def accepted(self):
        return [vote for status, votes in self.batches if status == 202 for vote in votes]

    def wait_sent(self, n, timeout=120):
        wait_until(lambda: self.sent() >= n, timeout, "{} votes sent".format(n))


def expected_counts(votes):
    counts = collections.defaultdict(collections.Counter)
    for post, _, score in votes:
        counts[post]["upvote" if score == 1 else "downvote"] += 1
    return dict(counts)


def check(services, load, label):
    """Every 202 counted exactly once, each voter's entry there, the
    leaderboard the counts sorted; the figures printed."""
    accepted = load.accepted()
    others = collections.Counter(status for status, _ in load.batches if status != 202)
    expected = expected_counts(accepted)
    wait_until(lambda: services.queue_messages(contracts.VOTES_QUEUE) == 0
               and services.counted() == expected, DRAIN_TIMEOUT,
               "every accepted vote counted", interval=0.5)
    counted = services.counted()
    print("\n[{}] sent={} accepted={} other answers={} counted={} posts={}".format(
        label, load.sent(), len(accepted), dict(others),
        sum(sum(c.values()) for c in counted.values()), len(counted)))
    assert len(accepted) == load.sent() and not others
    assert counted == expected

    store = services.redis
    with store.pipeline(transaction=False) as pipe:
        for post, voter, _ in accepted:
            pipe.hget(contracts.voters_key(post), voter)
        entries = pipe.execute()
    wrong = [(vote, entry) for vote, entry in zip(accepted, entries, strict=True)
             if entry is None or int(entry.rsplit(":", 1)[1]) != vote[2]]
    assert wrong == []

    ranked = sorted(expected, key=lambda post: (
        -(expected[post]["upvote"] - expected[post]["downvote"]), post))[:TOP]
    want = [{"postId": post, "upvote": expected[post]["upvote"],
             "downvote": expected[post]["downvote"],
             "score": expected[post]["upvote"] - expected[post]["downvote"]}
            for post in ranked]
    got = requests.get(services.base_url + "/posts/top", params={"limit": TOP},
                       timeout=10).json()
    assert got == {"posts": want}


def reduced_nodes(services):
    """The nodes the votes service reports with reduced durability."""
    return sorted(labels[0][1] for (name, labels), value in
                  services.metrics(services.votes).items()
                  if name == "votes_store_reduced_durability" and value == 1)


def log_lines(process, text):
    return [line for line in process.log_path.read_text().splitlines() if text in line]


def counted_within(services, votes, deadline, what):
    """Until every vote of ``votes`` is counted (more may be), by ``deadline``
    (time.monotonic())."""
    expected = expected_counts(votes)

    def covered():
        try:
            counted = services.counted()
        except redis.ConnectionError:
            # the test's own reader met the failover (Sentinel naming no
            # master for a moment): not yet known, asked again
            return False
        return all(counted.get(post, collections.Counter()) >= want
                   for post, want in expected.items())
    wait_until(covered, max(deadline - time.monotonic(), 0), what, interval=0.5)


def test_a_master_killed_mid_load_loses_and_doubles_nothing(services, redis_servers):
    total = 20_000
    bucket = contracts.bucket_of("p0")
    slot = services.redis.keyslot(contracts.top_key(bucket))
    victim = redis_servers.master_of_slot(slot)
    (successor,) = redis_servers.replicas_of(victim)
    node = "127.0.0.1:{}".format(successor)
    with BatchLoad(services.base_url, total) as load:
        load.wait_sent(total // 4)
        killed = time.monotonic()
        redis_servers.kill_node(victim)
        took = redis_servers.wait_failover(victim, slot)
        # the successor, with no replica, acks on its own meanwhile
        wait_until(lambda: reduced_nodes(services) == [node], 30,
                   "the successor reported with reduced durability")
        # back as a replica of its successor, whose writes wait for it again
        redis_servers.restart_node(victim)
        redis_servers.wait_ok()
        print("\n[failover] master :{} killed after {} votes sent; cluster ok "
              "{:.1f} s later; roles now {}".format(
                  victim, total // 4, took, redis_servers.roles()))
        assert time.monotonic() - killed < 60
        wait_until(lambda: reduced_nodes(services) == [], 30,
                   "no master reported with reduced durability")
        load.wait_sent(total)
    assert load.sent() == total
    assert redis_servers.roles()[victim] == "slave"
    check(services, load, "failover")
    assert len(log_lines(services.votes, "Redis master {} has 0 replica(s) in sync, "
                                         "1 wanted".format(node))) == 1
    assert len(log_lines(services.votes, "Redis master {} has 1 replica(s) in sync "
                                         "again".format(node))) == 1


def test_a_master_and_a_replica_killed_for_good_leave_counting_exact(
        services, redis_servers):
    """No node is started again: the promoted replica has no replica, nor
    has the master whose replica died; both ack writes on their own
    (reduced durability, reported), and every vote accepted before the
    failures is counted within 60 s of them, every vote after by the end."""
    total = 20_000
    slot = services.redis.keyslot(contracts.top_key(contracts.bucket_of("p0")))
    victim = redis_servers.master_of_slot(slot)
    (successor,) = redis_servers.replicas_of(victim)
    other = next(port for port in redis_servers.masters() if port != victim)
    (orphan,) = redis_servers.replicas_of(other)
    with BatchLoad(services.base_url, total) as load:
        load.wait_sent(total // 4)
        before = load.accepted()
        killed = time.monotonic()
        redis_servers.kill_node(victim)
        redis_servers.kill_node(orphan)
        redis_servers.wait_failover(victim, slot)
        counted_within(services, before, killed + 60,
                       "the votes accepted before the failures counted")
        print("\n[for good] master :{} and replica :{} killed after {} votes "
              "accepted; those counted {:.1f} s later".format(
                  victim, orphan, len(before), time.monotonic() - killed))
        load.wait_sent(total)
    assert redis_servers.master_of_slot(slot) == successor
    check(services, load, "for good")

    reduced = ["127.0.0.1:{}".format(port) for port in sorted((successor, other))]
    assert reduced_nodes(services) == reduced
    samples = services.metrics(services.votes)
    for node in reduced:
        assert samples[("votes_store_unreplicated_writes_total", (("node", node),))] > 0
        assert len(log_lines(services.votes, "Redis master {} has 0 replica(s) in "
                                             "sync, 1 wanted".format(node))) == 1
    ready = requests.get(services.base_url + "/ready", timeout=10)
    assert (ready.status_code, ready.json()["checks"]["durability"],
            ready.json()["checks"]["reducedNodes"]) == (200, "reduced", reduced)


def test_resharding_under_load_counts_exactly(services, redis_servers):
    total = 100_000  # at most: it stops once the reshard is over
    masters = redis_servers.masters()
    source, target = masters[0], masters[1]
    slots = {services.redis.keyslot(contracts.top_key(b))
             for b in range(contracts.DEFAULT_BUCKETS)}
    moving = {slot for slot in slots if redis_servers.master_of_slot(slot) == source}
    assert moving  # some buckets live on the source master
    done = threading.Event()

    def reshard():
        try:
            redis_servers.cli(
                "--cluster", "reshard", "127.0.0.1:{}".format(source),
                "--cluster-from", redis_servers.node_id(source),
                "--cluster-to", redis_servers.node_id(target),
                "--cluster-slots", str(len(redis_servers.slots_of(source))),
                "--cluster-yes",
                "--cluster-pipeline", "10")
        finally:
            done.set()
    with BatchLoad(services.base_url, total) as load:
        load.wait_sent(2000)
        started = time.monotonic()
        mover = eventlet.spawn(reshard)
        wait_until(done.is_set, 240, "the reshard to end", interval=0.5)
        mover.wait()
        took = time.monotonic() - started
        sent_during = load.sent()
        load.wait_sent(min(total, sent_during + 2000))  # on, to buckets that moved
        load.stop()
    redis_servers.wait_ok()
    redirects = {kind: services.metrics(services.votes).get(
        ("votes_store_redirects_total", (("kind", kind),)), 0) for kind in ("MOVED", "ASK")}
    print("\n[reshard] all slots of :{} moved to :{} in {:.1f} s, {} of them "
          "holding buckets; {} votes sent by its end; redirects followed {}".format(
              source, target, took, len(moving), sent_during, redirects))
    assert all(redis_servers.master_of_slot(slot) == target for slot in moving)
    assert total > sent_during > 2000 + 1000  # votes flowed during the move
    check(services, load, "reshard")
    assert redirects["MOVED"] > 0
