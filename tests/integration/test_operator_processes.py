"""The operator gate on every /metrics and /ready a process serves: the
votes service's METRICS_ADDRESS (bound to every interface by default) as a
`nameko run` process, and the gateway's PUT /posts/<postId> beside it."""
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import HEALTH_OK
from tests.fault import conftest as fault
from tests.fault.harness import Cluster

TOKEN = "s3cret-operator"
TOKEN_REQUIRED = {"error": "OPERATOR_TOKEN_REQUIRED",
                  "message": "this needs the operator's bearer token"}
GOOD = {"Authorization": "Bearer " + TOKEN}

pytest_runtest_makereport = fault.pytest_runtest_makereport
private_redis = fault.private_redis


@pytest.fixture
def cluster(request, tmp_path, rabbit_config, private_redis):
    cluster = Cluster(tmp_path, rabbit_config["AMQP_URI"], rabbit_config["vhost"],
                      private_redis, settings={"OPERATOR_TOKEN": TOKEN})
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)


def status_url(process, path):
    config = Path(process.argv[process.argv.index("--config") + 1])
    return "http://{}{}".format(yaml.safe_load(config.read_text())["METRICS_ADDRESS"], path)


def test_the_votes_services_metrics_and_ready_need_the_operator_token(cluster):
    votes = cluster.start_votes()
    for path in ("/metrics", "/ready"):
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Basic " + TOKEN}):
            response = requests.get(status_url(votes, path), headers=headers, timeout=10)
            assert (response.status_code, response.json()) == (401, TOKEN_REQUIRED), path
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    response = requests.get(status_url(votes, "/metrics"), headers=GOOD, timeout=10)
    assert (response.status_code, response.headers["X-Content-Type-Options"]) == (
        200, "nosniff")
    assert "votes_applied_total" in response.text
    response = requests.get(status_url(votes, "/ready"), headers=GOOD, timeout=10)
    assert (response.status_code, response.json()) == (
        200, {"status": "ready", "checks": {"redis": "ok"}})
    # liveness stays open: the container's healthcheck has no token
    response = requests.get(status_url(votes, "/health"), timeout=10)
    assert (response.status_code, response.json()) == (200, HEALTH_OK)


def test_the_votes_services_ready_says_when_redis_is_down(cluster):
    votes = cluster.start_votes()
    cluster.redis_server.kill()
    response = requests.get(status_url(votes, "/ready"), headers=GOOD, timeout=10)
    assert (response.status_code, response.json(), response.headers["Retry-After"]) == (
        503, {"error": "NOT_READY", "message": "failing: redis",
              "checks": {"redis": "unavailable"}}, "1")
