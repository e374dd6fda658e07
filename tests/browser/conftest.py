"""Fixtures of the browser tests: Debian's chromium driven by Playwright
(set up by `make test`: scripts/browser.py), and both services as `nameko
run` processes on a vhost and a redis-server of the test's own, their logs
printed when the test failed (the fault tests' harness). The machine's
RabbitMQ is enough here: nothing stops it."""
import os
import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.fault import conftest as fault
from tests.fault.harness import Cluster

CHROMIUM = shutil.which(os.environ.get("CHROMIUM", "chromium"))

pytest_runtest_makereport = fault.pytest_runtest_makereport
private_redis = fault.private_redis


@pytest.fixture
def cluster(request, tmp_path, rabbit_config, private_redis):
    cluster = Cluster(tmp_path, rabbit_config["AMQP_URI"], rabbit_config["vhost"],
                      private_redis)
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)


@pytest.fixture(scope="session")
def browser():
    assert CHROMIUM, "no chromium: run `make browser` (scripts/browser.py)"
    # Playwright.stop() never returns under eventlet's monkey patching (the
    # root conftest.py): it is not called; the driver ends with this process
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox"])
    yield browser
    browser.close()
