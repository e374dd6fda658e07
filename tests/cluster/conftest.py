"""Fixtures of the cluster tests: three extra RabbitMQ nodes joined into one
cluster (booted once for the session: about half a minute), and the
services of one test on a vhost of their own there, through a failover
URI naming every node, with quorum queues."""
import uuid

import pytest

from harness.rabbit_cluster import RabbitCluster
from services.platform.brokers import QUEUE_TYPE_CONFIG_KEY, QUORUM
from tests.fault.conftest import (  # noqa: F401 (fixture and hook)
    private_redis,
    pytest_runtest_makereport,
)
from tests.fault.harness import Cluster


class ServicesOnCluster(Cluster):
    """The fault tests' services, on a vhost of the RabbitMQ cluster."""

    def __init__(self, tmp_path, rabbit, vhost, redis_server):
        super().__init__(tmp_path, rabbit.uri(vhost), vhost, redis_server,
                         settings={QUEUE_TYPE_CONFIG_KEY: QUORUM})
        self.rabbit = rabbit

    def queue_messages(self, name):
        """Ready plus unacknowledged messages, as a running node sees them."""
        info = self.rabbit.queue_info(self.vhost, name)
        return int(info["messages"]) if info else 0


@pytest.fixture(scope="session")
def rabbit_cluster():
    cluster = RabbitCluster(first_port=5691, first_dist_port=25691)
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
