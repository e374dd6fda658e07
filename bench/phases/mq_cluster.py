"""What replication costs: single votes through a gateway on a three-node
RabbitMQ cluster with quorum queues (the services given the failover URI of
all three nodes), against one node with classic queues and one node with
quorum queues, at each connection level, in the same run.

All four nodes are private ones of this machine (harness.rabbit_node,
harness.rabbit_cluster, same binary and settings), booted for this phase
and stopped after it; each setup has its own gateway and votes process, on
the bench's Redis. Not run with --quick: booting the nodes takes about
half a minute."""
import os

from bench.context import cpu_note, fmt
from harness.process import GATEWAY, VOTES
from harness.rabbit_cluster import RabbitCluster
from harness.rabbit_node import RabbitNode
from services import contracts
from services.platform.brokers import CLASSIC, QUEUE_TYPE_CONFIG_KEY, QUORUM

# (key, label, nodes, queue type); the first is the baseline of the ratios
SETUPS = (
    ("1c", "1 node, classic", 1, CLASSIC),
    ("1q", "1 node, quorum", 1, QUORUM),
    ("3q", "3 nodes, quorum", 3, QUORUM),
)


def run(bench):
    if not bench.p["mq_cluster"]:
        bench.notes.append("mq_cluster: not run with --quick (it boots four RabbitMQ "
                           "nodes); alone: python -m bench --only mq_cluster")
        return
    tag = "bench{}".format(os.getpid())
    single = RabbitNode(tag + "s")
    cluster = RabbitCluster(size=3, prefix=tag + "n")
    started = []
    try:
        single.launch()
        cluster.start()
        single.await_boot()
        pids = {}
        for key, _, size, queue_type in SETUPS:
            vhost = "bench-" + key
            if size == 1:
                single.ctl("add_vhost", vhost)
                single.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
                uri, nodes = single.uri(vhost), [single]
            else:
                cluster.add_vhost(vhost)
                uri, nodes = cluster.uri(vhost), cluster.nodes
            pids[key] = _start(bench, key, uri, queue_type, started)
            pids[key].update({"mq{}".format(i + 1) if size > 1 else "mq": node.pid
                              for i, node in enumerate(nodes)})
            # a short run first: the services' first connections and pools
            bench.vote_run("mq warm-up " + key, 16, "mqw{}-".format(key),
                           bench.p["warmup"], target="gateway-" + key,
                           watch=pids[key])
        info = cluster.queue_info("bench-3q", contracts.VOTES_QUEUE)
        for connections in bench.p["levels"]:
            base = None
            for key, label, size, _ in SETUPS:
                votes = bench.vote_run(
                    "mq {} c{}".format(key, connections), connections,
                    "mq{}{}-".format(key, connections), target="gateway-" + key,
                    watch=pids[key])
                rate = votes.rate(202)
                base = base or rate
                bench.figures["mq_{}_c{}".format(key, connections)] = rate
                bench.row(
                    "single votes, RabbitMQ {}, c={}".format(label, connections),
                    "{} votes/s".format(fmt(rate)),
                    "/1 node classic {:.2f}".format(rate / base if base else 0),
                    "{} (gateway on {})".format(
                        votes.command, "3 private nodes, failover URI"
                        if size > 1 else "1 private node"),
                    "p50 {:.1f} ms p99 {:.1f} ms; {}; all counted {:.1f} s after "
                    "the run{}".format(
                        votes.p50_ms, votes.p99_ms, cpu_note(votes.cpu), votes.settle,
                        "; votes queue {} on {} nodes".format(
                            info["type"], len(info["members"])) if size > 1 else ""))
    finally:
        for name in reversed(started):
            bench.env.stop_service(name)
        cluster.close()
        single.stop()


def _start(bench, key, uri, queue_type, started):
    """A votes process and a gateway on ``uri``; their pids."""
    settings = {QUEUE_TYPE_CONFIG_KEY: queue_type}
    for name, module, http in (("votes", VOTES, False), ("gateway", GATEWAY, True)):
        started.append("{}-{}".format(name, key))
        bench.env.start_service(started[-1], module, http=http, amqp_uri=uri,
                                settings=settings)
    gateway = bench.env.services["gateway-" + key]
    # a 404 for an unknown post: the RPC path to votes works too
    gateway.wait_http("/vote-counts?postId=bench-ready", 60, {404})
    return {"gateway": gateway.pid, "votes": bench.env.services["votes-" + key].pid}
