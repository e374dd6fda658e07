"""A RabbitMQ node lost for good, and the operator's walk that replaces it.

On the three-node cluster (conftest.py), the services' AMQP_URI naming all
three nodes and their queues quorum queues, the node that leads the votes
queue is killed with kill -9 under load and never started again. Votes
keep flowing (a 503, answered within 5 s, only while connections move) and
every vote accepted by then is counted within 60 s of the failure; the
live counts (GET /stream) go on while votes flow. Then,
still under load, the operator's walk: ``forget_cluster_node`` from a
survivor, a new node joined, ``rabbitmq-queues grow <new> all``. The votes
queue's members are then the two survivors and the new node, clients see
nothing of the walk (no 503 from its start on), and every 202 is counted
exactly once. The services keep the lost node's address in AMQP_URI all
along: their failover skips it."""
import collections
import json
import time

from harness.process import wait_until
from tests.cluster.test_rabbit_cluster import VOTES_QUEUE, recovery_checks, start
from tests.fault.harness import MAX_VOTES, tally, verify, within_recovery
from tests.integration.test_stream import Stream

LABEL = "leader node lost for good"
RATE = 200           # votes a second: a node boots beside the load
BEFORE = 1500        # votes answered before the failure
AFTER = 1000         # votes answered after the walk
LIVE_AHEAD = 200     # the load votes on the live probe's post this many votes on
COUNTED_BOUND = 60   # every vote accepted so far is counted by then (s after the failure)
WALK_TIMEOUT = 30    # membership changes show in list_queues within this


def members(rabbit_cluster, vhost):
    info = rabbit_cluster.queue_info(vhost, VOTES_QUEUE)
    return sorted(info["members"]) if info else None


def names(nodes):
    return sorted(node.name for node in nodes)


def covered(counted, expected):
    empty = collections.Counter()
    return all(counted.get(post, empty) >= votes for post, votes in expected.items())


def serving(via, vhost, nodes):
    """{member: Raft state} of the votes queue (``rabbitmq-queues
    quorum_status``) if its members are ``nodes``, a leader and followers."""
    rows = json.loads(via.queues("quorum_status", VOTES_QUEUE, "--vhost", vhost,
                                 "--formatter", "json").stdout)
    states = {row["Node Name"]: row["Raft State"] for row in rows}
    expected = ["follower"] * (len(nodes) - 1) + ["leader"]
    return sorted(states) == names(nodes) and sorted(states.values()) == expected and states


def live_counts_problems(services, load):
    """The live counts go on (GET /stream, fed by the votes service's
    counts_changed): a post the load is about to vote on shows its vote,
    in the snapshot or as an update. A reader waits Stream's 10 s at most
    for each piece."""
    probe = "p{}".format(len(load.answers) + LIVE_AHEAD)
    stream = Stream(services.web_port, "postId=" + probe)
    try:
        posts = stream.event()["data"]["posts"]
        while not posts[0]["upvote"] + posts[0]["downvote"]:
            posts = [stream.event()["data"]]
    except (OSError, EOFError) as exc:  # a timeout is an OSError
        return ["no live count of {} (voted on after the failure) on GET /stream: "
                "{!r}".format(probe, exc)]
    finally:
        stream.close()
    return []


def wait_members(rabbit_cluster, vhost, nodes, what):
    wait_until(lambda: members(rabbit_cluster, vhost) == names(nodes),
               WALK_TIMEOUT, "the votes queue's members to be {} ({}), are {}".format(
                   names(nodes), what, members(rabbit_cluster, vhost)), interval=1)


def test_votes_queue_leader_lost_for_good_then_replaced(rabbit_cluster, services):
    lost = start(rabbit_cluster, services)
    survivors = [node for node in rabbit_cluster.nodes if node is not lost]
    with services.load(limit=MAX_VOTES, unique=True, rate=RATE) as load:
        load.wait_sent(BEFORE)
        failed = time.monotonic()
        lost.kill()
        problems = within_recovery(failed, recovery_checks(services, load, failed),
                                   label=LABEL)
        accepted = tally(load.accepted())
        try:
            wait_until(lambda: covered(services.counted(), accepted),
                       failed + COUNTED_BOUND - time.monotonic(),
                       "the {} votes accepted so far to be counted".format(
                           len(load.accepted())), interval=0.5)
        except AssertionError as exc:
            problems.append("{}s after the failure: {}".format(COUNTED_BOUND, exc))
        print("\n[node lost] {} killed; the votes accepted by then counted {:.1f}s "
              "after".format(lost.name, time.monotonic() - failed))
        problems += live_counts_problems(services, load)

        walk = time.monotonic()
        rabbit_cluster.forget(lost)
        wait_members(rabbit_cluster, services.vhost, survivors, "after forget_cluster_node")
        forgotten = time.monotonic()
        new = rabbit_cluster.add_node()
        joined = time.monotonic()
        grown = [row.split("\t") for row in rabbit_cluster.grow(new).splitlines()[1:]]
        ours = {row[1]: row[2:] for row in grown if row[0] == services.vhost}
        assert VOTES_QUEUE in ours and all(
            result == ["3", "ok"] for result in ours.values()), grown
        wait_members(rabbit_cluster, services.vhost, survivors + [new], "after grow")
        print("[node lost] walk: forget {:.1f}s, {} booted and joined {:.1f}s, "
              "grow {:.1f}s".format(forgotten - walk, new.name, joined - forgotten,
                                    time.monotonic() - joined))
        states = wait_until(lambda: serving(new, services.vhost, survivors + [new]),
                            WALK_TIMEOUT, "a leader and two followers, the new node among them")
        print("[node lost] rabbitmq-queues quorum_status: {}".format(states))
        load.wait_sent(AFTER)
        load.stop()

    assert lost.host in services.amqp_uri  # the services were never told
    assert rabbit_cluster.leader(services.vhost, VOTES_QUEUE) in survivors + [new]
    dead = [process for process in services.processes if not process.alive]
    problems += ["{} exited".format(process.label) for process in dead]
    early = [a for a in load.refused() if a.started + a.latency < failed]
    if early:
        problems.append("{} votes refused before the failure, e.g. {}".format(
            len(early), early[:3]))
    during_walk = [a for a in load.refused() if a.started + a.latency >= walk]
    if during_walk:
        problems.append("{} votes refused during the walk, e.g. {}".format(
            len(during_walk), during_walk[:3]))
    if load.refused():
        print("[node lost] 503s from {:.2f}s to {:.2f}s after the failure".format(
            min(a.started for a in load.refused()) - failed,
            max(a.started + a.latency for a in load.refused()) - failed))
    # a refused vote may still have been enqueued: it may be counted
    verify(LABEL, services, load, problems,
           in_doubt=load.refused(), refusals=True)
    assert len(services.processes) == 2  # no restart
