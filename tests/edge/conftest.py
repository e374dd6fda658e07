"""Fixtures of the hostile-client tests: the gateway as a real ``nameko run``
process (as tests/fault runs it), with short limits so that slow clients
are cut within seconds, on a vhost of its own."""
import pytest
import requests
import yaml

from harness.process import (
    GATEWAY,
    START_TIMEOUT,
    Process,
    free_port,
    wait_until,
    write_config,
)
from harness.rabbit import amqp_uri
from tests.conftest import AMQP_HOST

# the limits of the gateways under test
EDGE_LIMITS = {
    "HTTP_HEADER_TIMEOUT": 2,
    "HTTP_BODY_TIMEOUT": 2,
    "HTTP_IDLE_TIMEOUT": 2,
    "HTTP_MAX_LARGE_BODIES": 4,
}


class Edge:
    """One service process under test, with its address."""

    def __init__(self, process, port, config_path):
        self.process = process
        self.port = port
        self.address = ("127.0.0.1", port)
        self.base_url = "http://127.0.0.1:{}".format(port)
        self.config_path = config_path

    def get(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return requests.get(self.base_url + path, **kwargs)

    def post(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return requests.post(self.base_url + path, **kwargs)


def start_service(tmp_path, amqp_uri, redis_uri, module=GATEWAY, nofile=None,
                  limits=EDGE_LIMITS, name="gateway", port_key="WEB_SERVER_ADDRESS"):
    """Start ``module`` with the edge limits; wait until ``port_key``
    answers HTTP. Returns an Edge on that port."""
    web_port = free_port()
    config_path = write_config(tmp_path / (name + ".yml"), amqp_uri, redis_uri,
                               web_port)
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    config.update(limits)
    port = web_port
    if port_key != "WEB_SERVER_ADDRESS":
        port = int(config[port_key].rsplit(":", 1)[1])
    config_path.write_text(yaml.safe_dump(config))
    process = Process.nameko(name, module, config_path, tmp_path / (name + ".log"),
                             nofile=nofile, port=port).start()
    process.wait_http("/health", START_TIMEOUT)
    return Edge(process, port, config_path)


def log_with(edge, text, timeout=5):
    """The service's log (bytes) once it holds ``text``."""
    def read():
        log = edge.process.log_path.read_bytes()
        return log if text in log else None
    return wait_until(read, timeout, "{!r} in the log of {}".format(text, edge.process.label))


@pytest.fixture(scope="module")
def module_vhost(vhost_pool):
    vhost = vhost_pool.take()
    yield vhost, amqp_uri(AMQP_HOST, vhost)
    vhost_pool.release(vhost)


@pytest.fixture(scope="module")
def gateway(module_vhost, tmp_path_factory):
    """One gateway for the tests that leave it running."""
    tmp_path = tmp_path_factory.mktemp("edge")
    edge = start_service(tmp_path, module_vhost[1], "redis://127.0.0.1:6379/15")
    yield edge
    edge.process.kill()
