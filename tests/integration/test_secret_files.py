"""Credentials from files (<VARIABLE>_FILE, the Docker and Kubernetes
secrets convention), as `nameko run` processes: the config the processes
get names an unreachable RabbitMQ and Redis and no operator token, and only
the files hold the right ones; no plain variable is set."""
import json
import subprocess
import sys

import kombu
import pytest
import requests

from harness.process import ROOT, START_TIMEOUT, VOTES, free_port, wait_until, write_config
from services.votes.dead_letters import DEAD_LETTER_QUEUE
from tests.fault import conftest as fault
from tests.fault.harness import Cluster

TOKEN = "t0ken-from-a-file"
NOWHERE = {"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/",
           "REDIS_URIS": {"votes": "redis://127.0.0.1:1/0"}}
CREDENTIALS = ("AMQP_URI", "REDIS_URI", "OPERATOR_TOKEN")

pytest_runtest_makereport = fault.pytest_runtest_makereport
private_redis = fault.private_redis


@pytest.fixture
def cluster(request, tmp_path, rabbit_config, private_redis):
    cluster = Cluster(tmp_path, rabbit_config["AMQP_URI"], rabbit_config["vhost"],
                      private_redis, settings=NOWHERE)
    yield cluster
    report = getattr(request.node, "report_call", None)
    cluster.close(show_logs=report is None or report.failed)


def secret_files(monkeypatch, tmp_path, values):
    """Each credential in a file of its own (with the trailing newline an
    editor or `echo` leaves), named by <VARIABLE>_FILE in the environment
    the processes start with; the plain variables unset."""
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)
    for name, value in values.items():
        path = tmp_path / ("secret-" + name.lower())
        path.write_text(value + "\n")
        monkeypatch.setenv(name + "_FILE", str(path))


def test_both_services_take_their_credentials_from_files(cluster, monkeypatch, tmp_path):
    secret_files(monkeypatch, tmp_path, {
        "AMQP_URI": cluster.amqp_uri, "REDIS_URI": cluster.redis_server.uri,
        "OPERATOR_TOKEN": TOKEN})
    cluster.start_votes()  # it consumes on the test's vhost: the file's broker
    cluster.start_gateway()
    votes = [("f1", 1), ("f1", 1), ("f1", -1), ("f2", -1)]
    for post, score in votes:
        response = requests.post(cluster.base_url + "/vote",
                                 json={"postId": post, "score": score}, timeout=10)
        assert response.status_code == 202, response.text
    # counted in the file's Redis, exactly
    wait_until(lambda: cluster.counted() == {"f1": {"upvote": 2, "downvote": 1},
                                             "f2": {"downvote": 1}},
               30, "the votes to be counted")
    assert cluster.counted() == {"f1": {"upvote": 2, "downvote": 1}, "f2": {"downvote": 1}}
    assert cluster.read_through_gateway("f1") == (
        200, {"postId": "f1", "upvote": 2, "downvote": 1, "score": 1})
    # /metrics needs the file's token (its trailing newline dropped)
    metrics = cluster.base_url + "/metrics"
    for headers in ({}, {"Authorization": "Bearer " + TOKEN + "x"}):
        response = requests.get(metrics, headers=headers, timeout=10)
        assert (response.status_code, response.json()["error"]) == (
            401, "OPERATOR_TOKEN_REQUIRED")
    response = requests.get(metrics, headers={"Authorization": "Bearer " + TOKEN},
                            timeout=10)
    assert response.status_code == 200
    assert 'gateway_votes_accepted_total 4.0' in response.text


@pytest.mark.parametrize("problem, message", [
    ("both", "set AMQP_URI or AMQP_URI_FILE, not both"),
    ("missing", "AMQP_URI_FILE: cannot read {path}: No such file or directory"),
])
def test_a_bad_credential_file_stops_the_service_at_start(
        cluster, monkeypatch, tmp_path, problem, message):
    secret_files(monkeypatch, tmp_path, {"AMQP_URI": cluster.amqp_uri})
    path = tmp_path / "secret-amqp_uri"
    if problem == "both":
        monkeypatch.setenv("AMQP_URI", cluster.amqp_uri)
    else:
        path = tmp_path / "no-such-file"
        monkeypatch.setenv("AMQP_URI_FILE", str(path))
    votes = cluster._run(VOTES, "votes")
    wait_until(lambda: not votes.alive, START_TIMEOUT, "the votes service to stop")
    log = votes.log_path.read_text()
    # nameko run prints a ConfigurationError so (and exits with 0)
    assert "Error: " + message.format(path=path) in log
    assert cluster.amqp_uri not in log  # the secret is never printed


def test_the_dead_letter_tool_takes_its_credentials_from_files(cluster, monkeypatch, tmp_path):
    """`dead_letters show` on a config naming no reachable broker: the
    file's URI reaches the test's vhost, where one message waits."""
    secret_files(monkeypatch, tmp_path, {"AMQP_URI": cluster.amqp_uri,
                                         "REDIS_URI": cluster.redis_server.uri})
    with kombu.Connection(cluster.amqp_uri) as connection:
        queue = DEAD_LETTER_QUEUE(connection.default_channel)
        queue.declare()
        kombu.Producer(connection.default_channel).publish(
            {"id": "dead-1"}, exchange=queue.exchange, routing_key=queue.routing_key,
            serializer="json", headers={"x-dead-letter-reason": "invalid payload"})
    config = write_config(tmp_path / "tool.yml", NOWHERE["AMQP_URI"],
                          NOWHERE["REDIS_URIS"]["votes"], free_port())
    shown = subprocess.run(
        [sys.executable, "-m", "services.votes.dead_letters", "show", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stderr.splitlines()[-1]) == (
        0, "1 dead-lettered message(s)"), shown.stderr
    assert json.loads(shown.stdout)["body"] == '{"id": "dead-1"}'
