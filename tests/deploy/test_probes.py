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
from services import __version__
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
    return body == {"status": "waiting", "waiting_for": [server], "version": __version__}


@pytest.fixture
def start(tmp_path):
    """start(name, amqp_uri, redis_uri): the gateway or the votes service,
    stopped after the test."""
    started = []

    def start(name, amqp_uri, redis_uri):
        options = {} if name == "gateway" else {
            "module": VOTES, "name": "votes", "port_key": "METRICS_ADDRESS"}
        edge = start_service(tmp_path, amqp_uri, redis_uri, limits={}, **options)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.process.stop()


@pytest.mark.parametrize("name,server", [("gateway", "rabbitmq"), ("votes", "rabbitmq"),
                                         ("votes", "redis")])
def test_a_process_waiting_for_a_broker_lives_but_is_not_ready(
        name, server, rabbit_config, single_redis_uri, start):
    amqp_uri = rabbit_config["AMQP_URI"]
    redis_uri = single_redis_uri
    if server == "rabbitmq":
        amqp_uri = NOWHERE_AMQP.format(free_port())
    else:
        redis_uri = NOWHERE_REDIS.format(free_port())
    edge = start(name, amqp_uri, redis_uri)
    wait_until(lambda: waits_for(edge, server), 15, "{} waiting for {}".format(name, server))
    assert liveness_passes(edge, name)
    assert not readiness_passes(edge, name)


@pytest.mark.parametrize("name", ["gateway", "votes"])
def test_a_process_with_its_brokers_is_ready(name, rabbit_config, single_redis_uri, start):
    edge = start(name, rabbit_config["AMQP_URI"], single_redis_uri)
    wait_until(lambda: readiness_passes(edge, name), 15, "{} ready".format(name))
    assert liveness_passes(edge, name)
    if name == "gateway":
        # no votes service runs: /ready fails, the readiness probe does not
        ready = requests.get(edge.base_url + "/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["votes"] == "unavailable"
