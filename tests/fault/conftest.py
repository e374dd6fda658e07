"""Fixtures of the fault tests: a private redis-server and the services of
one test, killed at teardown, their logs printed when the test failed."""
import pytest

from tests.fault.harness import Cluster, FaultRedis


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
def cluster(request, tmp_path, rabbit_config, private_redis):
    cluster = Cluster(tmp_path, rabbit_config["AMQP_URI"],
                      rabbit_config["vhost"], private_redis)
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)
