"""Each service started while RabbitMQ or Redis cannot be reached: it starts
and waits, says so in its log and on /health, stops on SIGTERM within the
bound, and proceeds, counting every vote exactly once, when the server
comes."""
import json
from pathlib import Path

import pytest
import requests
import yaml
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange

from harness.process import (
    GATEWAY,
    START_TIMEOUT,
    VOTES,
    Process,
    free_port,
    wait_until,
    write_config,
)
from services import __version__, contracts
from tests.conftest import HEALTH_OK, make_event, make_vote
from tests.fault.harness import RPC_QUEUE, VOTES_QUEUE, rabbitmq_stopped, terminate
from tests.fault.test_malformed_rpc import Client, error_of, vote

WAITING = {rabbitmq: {"status": "waiting", "waiting_for": [rabbitmq], "version": __version__}
           for rabbitmq in ("rabbitmq", "redis")}
OK = HEALTH_OK
LOG_LINE = {"rabbitmq": "waiting for RabbitMQ at amqp://guest:***@127.0.0.1:{}/",
            "redis": "waiting for Redis at redis://127.0.0.1:{}/0"}


def health_url(process):
    """The /health of a votes process (on METRICS_ADDRESS) or a gateway."""
    if process.label == "gateway":
        return "http://127.0.0.1:{}/health".format(process.port)
    config = Path(process.argv[process.argv.index("--config") + 1])
    return "http://{}/health".format(yaml.safe_load(config.read_text())["METRICS_ADDRESS"])


def health(process):
    """(status, JSON body) of /health, or None while it does not answer."""
    assert process.alive, "{} exited:\n{}".format(process.label, process.tail())
    try:
        response = requests.get(health_url(process), timeout=2)
        return response.status_code, response.json()
    except (requests.RequestException, ValueError):
        return None


def await_health(process, body, timeout=START_TIMEOUT):
    wait_until(lambda: health(process) == (200, body), timeout,
               "{} /health to be {}".format(process.label, body), interval=0.1)


def launch(tmp_path, module, label, amqp_uri, redis_uri):
    port = free_port()
    config = write_config(tmp_path / (label + ".yml"), amqp_uri, redis_uri, port)
    return Process.nameko(label, module, config, tmp_path / (label + ".log"),
                          port=port).start()


@pytest.fixture
def vhost(fault_broker, fault_vhosts):
    name = fault_vhosts.take()
    yield fault_broker.uri(name)
    fault_vhosts.release(name)


@pytest.mark.parametrize("module, label", [(VOTES, "votes"), (GATEWAY, "gateway")])
@pytest.mark.parametrize("missing", ["rabbitmq", "redis"])
def test_a_service_waits_for_a_missing_server_and_stops_on_sigterm(
        tmp_path, vhost, private_redis, module, label, missing):
    closed = free_port()  # nothing listens there
    amqp_uri, redis_uri = vhost, private_redis.uri
    if missing == "rabbitmq":
        amqp_uri = "amqp://guest:guest@127.0.0.1:{}/".format(closed)
    else:
        redis_uri = "redis://127.0.0.1:{}/0".format(closed)
    process = launch(tmp_path, module, label, amqp_uri, redis_uri)
    try:
        # the gateway needs Redis only for rate limits (off here): no wait
        expected = OK if (label, missing) == ("gateway", "redis") else WAITING[missing]
        await_health(process, expected)
        if expected is not OK:
            wait_until(lambda: LOG_LINE[missing].format(closed) in process.tail(),
                       10, "the log line of the wait")
        assert "guest:guest" not in process.log_path.read_text()
        assert terminate(process, label) == []
    finally:
        process.kill()


def test_votes_started_before_rabbitmq_consumes_when_it_comes(cluster):
    with rabbitmq_stopped(cluster):
        votes = launch(cluster.tmp_path, VOTES, "votes", cluster.amqp_uri,
                       cluster.redis_server.uri)
        cluster.processes.append(votes)
        await_health(votes, WAITING["rabbitmq"])
    wait_until(lambda: (cluster.queue_state(VOTES_QUEUE)[1] >= 1
                        and cluster.queue_state(RPC_QUEUE)[1] >= 1),
               START_TIMEOUT, "the votes service to consume")
    await_health(votes, OK, timeout=10)
    client = Client(cluster.amqp_uri)
    try:
        for n in range(5):  # each delivered twice: counted once
            client.publish(vote("p{}".format(n % 2)), times=2,
                           reply_to=client.reply_to, correlation_id="c{}".format(n))
        replies = client.take_replies(10)
    finally:
        client.close()
    assert all(reply["error"] is None for bodies in replies.values() for reply in bodies)
    assert cluster.counted() == {"p0": {"upvote": 3}, "p1": {"upvote": 2}}
    assert "RabbitMQ at amqp://guest:***@" in votes.tail()
    assert terminate(votes, "votes") == []


def test_votes_started_before_redis_counts_when_it_comes(cluster, private_redis):
    private_redis.kill()
    votes = cluster.start_votes()  # consumes: RabbitMQ is there
    await_health(votes, WAITING["redis"])
    # an RPC vote is refused meanwhile; events wait for Redis, unacked
    client = Client(cluster.amqp_uri)
    try:
        client.publish(vote("rpc"), reply_to=client.reply_to, correlation_id="c-rpc")
        assert [error_of(reply) for reply in client.take_replies(1)["c-rpc"]] == [
            "StoreUnavailable"]
    finally:
        client.close()
    events = [make_event(*[make_vote(postId="e{}".format(n % 3),
                                     score=-1 if n % 4 == 0 else 1)
                           for n in range(k, k + 4)]) for k in range(0, 40, 4)]
    exchange = get_event_exchange(contracts.GATEWAY_SERVICE, {})
    with Connection(cluster.amqp_uri) as connection:
        producer = Producer(connection.channel())
        for event in events:
            producer.publish(json.dumps(event).encode(), exchange=exchange,
                             routing_key=contracts.VOTE_CAST, delivery_mode=2,
                             content_type="application/json",
                             content_encoding="utf-8", declare=[exchange])
            producer.publish(json.dumps(event).encode(), exchange=exchange,
                             routing_key=contracts.VOTE_CAST, delivery_mode=2,
                             content_type="application/json",
                             content_encoding="utf-8")  # and a duplicate
    wait_until(lambda: cluster.queue_state(VOTES_QUEUE)[0] == 0, 10,
               "the events to be delivered")
    # the events now wait in the service, unacked
    assert cluster.queue_messages(VOTES_QUEUE) == 20

    private_redis.start()
    expected = {}
    for event in events:
        for one in event["votes"]:
            side = "upvote" if one["score"] == 1 else "downvote"
            expected.setdefault(one["postId"], {}).setdefault(side, 0)
            expected[one["postId"]][side] += 1
    wait_until(lambda: cluster.queue_messages(VOTES_QUEUE) == 0, 30,
               "the events to be applied and acked", interval=0.5)
    assert cluster.counted() == expected
    await_health(votes, OK, timeout=10)
    assert "Redis at redis://127.0.0.1:{}/0 reached".format(private_redis.port) in votes.tail()
    assert terminate(votes, "votes") == []
