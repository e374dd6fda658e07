"""The probes of deploy/kubernetes, run as the kubelet would run them
against real ``nameko run`` processes: liveness keeps a process that waits
for a broker (a restart would not bring the broker back), readiness keeps
traffic from a gateway that cannot reach RabbitMQ, and a votes outage
takes no gateway out of the Service."""
import subprocess
import sys

import pytest
import requests

from harness.process import VOTES, free_port, wait_until
from tests.deploy.test_kubernetes import app, pod_spec
from tests.edge.conftest import start_service

NOWHERE_AMQP = "amqp://guest:guest@127.0.0.1:{}/"
NOWHERE_REDIS = "redis://127.0.0.1:{}/0"


def probes(name):
    [container] = pod_spec(app("dev", name))["containers"]
    return container


def liveness_passes(edge, name):
    """The kubelet's httpGet: any status from 200 to 399 passes."""
    get = probes(name)["livenessProbe"]["httpGet"]
    status = requests.get(edge.base_url + get["path"], timeout=3).status_code
    return 200 <= status < 400


def readiness_passes(edge, name):
    """The manifest's exec command, with the address of this process (the
    image's python is the one the tests run on)."""
    command = list(probes(name)["readinessProbe"]["exec"]["command"])
    assert command[0] == "python" and command[-1].startswith("http://127.0.0.1:")
    command[0] = sys.executable
    command[-1] = "{}/{}".format(edge.base_url, command[-1].split("/", 3)[3])
    return subprocess.run(command, capture_output=True, timeout=10).returncode == 0


def waits_for(edge, server):
    body = requests.get(edge.base_url + "/health", timeout=3).json()
    return body == {"status": "waiting", "waiting_for": [server]}


@pytest.fixture
def stop_after():
    started = []
    yield started.append
    for edge in started:
        edge.process.stop()


def test_a_gateway_waiting_for_rabbitmq_lives_but_takes_no_traffic(
        tmp_path, single_redis_uri, stop_after):
    gateway = start_service(tmp_path, NOWHERE_AMQP.format(free_port()), single_redis_uri,
                            limits={})
    stop_after(gateway)
    wait_until(lambda: waits_for(gateway, "rabbitmq"), 15, "the gateway waiting for RabbitMQ")
    assert liveness_passes(gateway, "gateway")
    assert not readiness_passes(gateway, "gateway")


def test_a_gateway_with_rabbitmq_is_ready_with_no_votes_service(
        tmp_path, rabbit_config, single_redis_uri, stop_after):
    """/ready fails (no votes service): the readiness probe does not."""
    gateway = start_service(tmp_path, rabbit_config["AMQP_URI"], single_redis_uri, limits={})
    stop_after(gateway)
    wait_until(lambda: readiness_passes(gateway, "gateway"), 15, "the gateway ready")
    assert liveness_passes(gateway, "gateway")
    ready = requests.get(gateway.base_url + "/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["votes"] == "unavailable"


def test_a_votes_service_waiting_for_redis_lives_but_is_not_ready(
        tmp_path, rabbit_config, stop_after):
    votes = start_service(tmp_path, rabbit_config["AMQP_URI"], NOWHERE_REDIS.format(free_port()),
                          module=VOTES, name="votes", port_key="METRICS_ADDRESS", limits={})
    stop_after(votes)
    wait_until(lambda: waits_for(votes, "redis"), 15, "the votes service waiting for Redis")
    assert liveness_passes(votes, "votes")
    assert not readiness_passes(votes, "votes")


def test_a_votes_service_with_its_brokers_is_ready(
        tmp_path, rabbit_config, single_redis_uri, stop_after):
    votes = start_service(tmp_path, rabbit_config["AMQP_URI"], single_redis_uri,
                          module=VOTES, name="votes", port_key="METRICS_ADDRESS", limits={})
    stop_after(votes)
    wait_until(lambda: readiness_passes(votes, "votes"), 15, "the votes service ready")
    assert liveness_passes(votes, "votes")
