"""Fixtures of the hostile-client tests: the gateway as a real ``nameko run``
process (as tests/fault runs it), with short limits so that slow clients
are cut within seconds, on a vhost of its own."""
import os
import subprocess
import uuid

import pytest
import requests
import yaml
from nameko.testing.utils import find_free_port

from tests.conftest import AMQP_HOST, rabbitmqctl
from tests.fault.harness import (
    GATEWAY,
    NAMEKO,
    QUIET_WARNINGS,
    ROOT,
    START_TIMEOUT,
    Process,
    wait_until,
    write_config,
)

# the limits of the gateways under test
EDGE_LIMITS = {
    "HTTP_HEADER_TIMEOUT": 2,
    "HTTP_BODY_TIMEOUT": 2,
    "HTTP_IDLE_TIMEOUT": 2,
    "HTTP_MAX_LARGE_BODIES": 4,
}


class LimitedProcess(Process):
    """A Process started with a lower open-file limit (``ulimit -n``)."""

    def __init__(self, label, argv, log_path, nofile=None):
        super().__init__(label, argv, log_path)
        self.nofile = nofile

    def start(self):
        def limit():
            if self.nofile is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONWARNINGS=QUIET_WARNINGS),
                preexec_fn=limit)
        return self

    def log_text(self):
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def rss_kib(self, field="VmRSS"):
        with open("/proc/{}/status".format(self.proc.pid)) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(field + " not found")


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
    web_port = find_free_port()
    config_path = write_config(tmp_path / (name + ".yml"), amqp_uri, redis_uri,
                               web_port)
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    config.update(limits)
    port = web_port
    if port_key != "WEB_SERVER_ADDRESS":
        port = int(config[port_key].rsplit(":", 1)[1])
    config_path.write_text(yaml.safe_dump(config))
    process = LimitedProcess(name, [NAMEKO, "run", "--config", str(config_path), module],
                             tmp_path / (name + ".log"), nofile=nofile).start()
    edge = Edge(process, port, config_path)

    def listening():
        assert process.alive, "{} exited:\n{}".format(name, process.tail())
        try:
            requests.get(edge.base_url + "/health", timeout=2)
            return True
        except requests.RequestException:
            return False
    wait_until(listening, START_TIMEOUT, name + " to listen")
    return edge


@pytest.fixture(scope="module")
def module_vhost():
    vhost = "test-edge-{}".format(uuid.uuid4().hex[:12])
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost, "amqp://guest:guest@{}/{}".format(AMQP_HOST, vhost)
    rabbitmqctl("delete_vhost", vhost, check=False)


@pytest.fixture(scope="module")
def gateway(module_vhost, tmp_path_factory):
    """One gateway for the tests that leave it running."""
    tmp_path = tmp_path_factory.mktemp("edge")
    edge = start_service(tmp_path, module_vhost[1], "redis://127.0.0.1:6379/15")
    yield edge
    edge.process.kill()
