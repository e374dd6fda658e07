"""The services on a three-node RabbitMQ cluster with quorum queues, through
a failover AMQP_URI, while the node that leads the votes queue goes away
mid-load. Every vote answered 202 must be counted exactly once; a vote may
be refused (503, within 5 s) while the services move to another node; both
services carry on without a restart (tests/fault/harness.py: verify)."""
import time

from harness.rabbit_node import RabbitNode
from services import contracts
from tests.fault.harness import total, verify, within_recovery

VOTES = 10_000
VOTES_QUEUE = contracts.VOTES_QUEUE


def start(rabbit_cluster, services):
    """Both services up; the votes queue's leader, which is the node they
    connect to first (quorum queues start their leader on the node of the
    client that declares them)."""
    services.start_gateway()
    services.start_votes()
    info = rabbit_cluster.queue_info(services.vhost, VOTES_QUEUE)
    assert info["type"] == "quorum", info
    assert sorted(info["members"]) == sorted(n.name for n in rabbit_cluster.nodes)
    leader = rabbit_cluster.leader(services.vhost, VOTES_QUEUE)
    print("\n[cluster] votes queue leader {}, first node of AMQP_URI {}".format(
        leader.name, rabbit_cluster.nodes[0].name))
    return leader


def recovery_checks(services, load, since):
    return {
        "votes accepted again": load.accepting_since(since),
        "votes applied again": services.counting_beyond(total(services.counted())),
        "GET /vote-counts answering": services.reading(load),
    }


def finish(rabbit_cluster, services, load, label, problems):
    load.wait_sent(VOTES - len(load.answers))
    load.stop()
    assert len(load.answers) == VOTES
    dead = [process for process in services.processes if not process.alive]
    problems = problems + ["{} exited".format(p.label) for p in dead]
    leader = rabbit_cluster.leader(services.vhost, VOTES_QUEUE)
    print("[cluster] votes queue leader now {}".format(leader.name))
    # a refused vote may still have been enqueued: it may be counted
    verify(label, services, load, problems, in_doubt=load.refused(),
           refusals=True)
    assert len(services.processes) == 2  # no restart


def load_with_fault(rabbit_cluster, services, label, fault, repair=None):
    """VOTES votes; a third of the way in, ``fault(leader)`` takes the
    votes queue's leader away and the services must recover while it is
    away (the leader moves to another node); ``repair(leader)``, if given,
    brings it back at two thirds. Then every vote is verified."""
    leader = start(rabbit_cluster, services)
    with services.load(limit=VOTES, unique=True) as load:
        load.wait_sent(VOTES // 3)
        began = time.monotonic()
        fault(leader)
        problems = within_recovery(began, recovery_checks(services, load, began),
                                   label=label)
        assert rabbit_cluster.leader(services.vhost, VOTES_QUEUE) is not leader
        if repair is not None:
            # at two thirds of the votes, or now if recovery outlasted them
            load.wait_sent(max(0, 2 * VOTES // 3 - len(load.answers)))
            repair(leader)
        finish(rabbit_cluster, services, load, label, problems)


def test_votes_queue_leader_killed_mid_load(rabbit_cluster, services):
    load_with_fault(rabbit_cluster, services, "leader node kill -9",
                    RabbitNode.kill)


def test_votes_queue_leader_app_stopped_and_started_mid_load(rabbit_cluster,
                                                             services):
    load_with_fault(rabbit_cluster, services, "leader node stop_app",
                    RabbitNode.stop_app, repair=RabbitNode.start_app)
