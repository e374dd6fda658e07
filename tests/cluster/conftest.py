"""Fixtures of the cluster tests: three extra RabbitMQ nodes joined into one
cluster (booted once for the session: about half a minute), and the
services of one test on a vhost of their own there, through a failover
URI naming every node, with quorum queues."""
import os
import uuid

import pytest

from harness.rabbit_cluster import RabbitCluster
from services import contracts
from services.platform.brokers import QUEUE_TYPE_CONFIG_KEY, QUORUM
from tests.fault.conftest import (  # noqa: F401 (fixture and hook)
    private_redis,
    pytest_runtest_makereport,
)
from tests.fault.harness import COUNT_FIELDS, Cluster, post_counts

FIRST_PORT = 5691  # AMQP ports 5691-5693, distribution ports 25691-25693


class ServicesOnCluster(Cluster):
    """The fault tests' services, on a vhost of the RabbitMQ cluster."""

    def __init__(self, tmp_path, rabbit, vhost, redis_server):
        super().__init__(tmp_path, rabbit.uri(vhost), vhost, redis_server,
                         settings={QUEUE_TYPE_CONFIG_KEY: QUORUM})
        self.rabbit = rabbit

    def counted(self):
        """As Cluster.counted, the posts read in one pipeline: these tests
        vote on a post of its own each time, and a round trip per post
        takes seconds under load (longer than the recovery bound)."""
        keys = list(self.redis.scan_iter(contracts.POST_KEY_PATTERN, count=1000))
        pipeline = self.redis.pipeline(transaction=False)
        for key in keys:
            pipeline.hmget(key, COUNT_FIELDS)
        return {contracts.post_id_of(key): post_counts(fields)
                for key, fields in zip(keys, pipeline.execute(), strict=True)}

    def queue_messages(self, name):
        """Ready plus unacknowledged messages, as a running node sees them."""
        info = self.rabbit.queue_info(self.vhost, name)
        return int(info["messages"]) if info else 0


@pytest.fixture(scope="session")
def rabbit_cluster():
    # another port (and so other node names) beside a run on the default
    port = int(os.environ.get("CLUSTER_RABBIT_PORT", FIRST_PORT))
    cluster = RabbitCluster(
        prefix="rqc" if port == FIRST_PORT else "rqc{}n".format(port),
        first_port=port, first_dist_port=port + 20000)
    try:
        cluster.start()
        print("\n[rabbit cluster] {} nodes booted and joined in {:.1f}s".format(
            len(cluster.nodes), cluster.boot_seconds))
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def services(request, tmp_path, rabbit_cluster, private_redis):  # noqa: F811
    rabbit_cluster.heal()
    vhost = "cluster-" + uuid.uuid4().hex[:12]
    rabbit_cluster.add_vhost(vhost)
    services = ServicesOnCluster(tmp_path, rabbit_cluster, vhost, private_redis)
    yield services
    report = getattr(request.node, "report_call", None)
    services.close(show_logs=report is None or report.failed)
