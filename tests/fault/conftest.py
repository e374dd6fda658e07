"""Fixtures of the fault tests: a private RabbitMQ node for the session (the
tests stop it; the machine's broker stays up for everyone else), a private
redis-server and the services of one test, killed at teardown, their logs
printed when the test failed."""
import os

import pytest

from harness.rabbit import VhostPool
from harness.rabbit_node import RabbitNode
from tests.fault.harness import Cluster, FaultRedis


@pytest.fixture(scope="session")
def fault_broker():
    # its folder is in /tmp: pytest's tmp_path is closed to the rabbitmq user
    node = RabbitNode("fault-{}".format(os.getpid()))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def fault_vhosts(fault_broker):
    pool = VhostPool(prefix="fault", batch=5, node=fault_broker.name)
    yield pool
    pool.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "report_" + report.when, report)


@pytest.fixture
def private_redis(tmp_path):
    server = FaultRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def cluster(request, tmp_path, fault_broker, fault_vhosts, private_redis):
    vhost = fault_vhosts.take()
    cluster = Cluster(tmp_path, fault_broker.uri(vhost), vhost, private_redis,
                      broker=fault_broker)
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)
    fault_vhosts.release(vhost)
