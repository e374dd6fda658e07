"""Fault tests: the gateway and votes services as real processes on real
RabbitMQ and Redis, a stream of votes from concurrent clients through the
gateway, a fault in the middle of it. Every vote answered 202 must be
counted exactly once, per post, upvotes and downvotes apart (harness.py)."""
import signal
import time
from collections import Counter

import pytest
import requests
from nameko.testing.utils import find_free_port

from harness.process import wait_until
from services.platform.brokers import (
    STALL_AFTER,
    STALL_ANSWER_TIMEOUT,
    STALL_CHECK_INTERVAL,
)
from tests.fault.harness import (
    DEAD_LETTER_QUEUE,
    DRAIN_TIMEOUT,
    RECOVERY_TIMEOUT,
    RPC_QUEUE,
    VOTES_QUEUE,
    consumer_unserved,
    publish_malformed,
    rabbitmq_stopped,
    take_dead_letters,
    terminate,
    total,
    verify,
    within_recovery,
)
from tests.integration.test_stream import Stream

MALFORMED = 1000


# Before the kill or SIGTERM, Redis is frozen for a moment so that handlers
# are mid-way: their events get applied, but never acked, and come back.

def test_votes_killed_mid_stream_then_restarted(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(800)
        private_redis.freeze(1)
        votes.signal(signal.SIGKILL)
        votes.wait_exit(5)
        load.wait_sent(500)
        cluster.start_votes()
        load.wait_sent(800)
    verify("kill -9 votes", cluster, load)


def test_votes_terminated_mid_stream_then_restarted(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(800)
        private_redis.freeze(1)
        problems = terminate(votes, "SIGTERM votes")
        load.wait_sent(500)
        cluster.start_votes()
        load.wait_sent(800)
    verify("SIGTERM votes", cluster, load, problems)


def test_redis_stopped_mid_stream(cluster, private_redis):
    cluster.start_gateway()
    cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(800)
        private_redis.stop()
        time.sleep(4)
        private_redis.start()
        problems = within_recovery(time.monotonic(), {
            "votes applied again": cluster.counting_beyond(
                total(cluster.counted())),
            "GET /vote-counts answering": cluster.reading(load),
        }, label="Redis stopped")
        load.wait_sent(800)
    verify("Redis stopped", cluster, load, problems)


def test_rabbitmq_stopped_mid_stream(cluster):
    cluster.start_gateway()
    cluster.start_votes()
    # a post per vote: a refused vote the broker kept anyway shows alone
    with cluster.load(unique=True) as load:
        load.wait_sent(800)
        with rabbitmq_stopped(cluster) as outage:
            time.sleep(4)
        problems = within_recovery(outage.back, {
            "the gateway accepting votes": load.accepting_since(outage.back),
            "the votes service consuming": cluster.consuming(),
            "GET /vote-counts answering": cluster.reading(load),
        }, label="RabbitMQ stopped")
        load.wait_sent(800)
    verify("RabbitMQ stopped", cluster, load, problems, refusals=True,
           in_doubt=load.refused_in_flight(outage.going, outage.gone))


def test_votes_never_started_then_started(cluster):
    cluster.start_gateway()
    with cluster.load() as load:
        load.wait_sent(1000)
        waiting, consumers = cluster.queue_state(VOTES_QUEUE)
        counted_before = cluster.counted()
        cluster.start_votes()
        load.wait_sent(800)
    print("\n[votes never started] {} events queued, {} consumers".format(
        waiting, consumers))
    problems = [] if waiting and not consumers and not counted_before else [
        "expected votes queued unconsumed before the start: {} events, "
        "{} consumers, counted {}".format(waiting, consumers, counted_before)]
    verify("votes never started", cluster, load, problems)


def test_malformed_events_dead_lettered(cluster):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(200)
        # the load goes on meanwhile (green threads)
        published = publish_malformed(cluster.amqp_uri, MALFORMED)
        load.wait_sent(200)

    def dead_letters():
        depth = cluster.queue_state(DEAD_LETTER_QUEUE)[0]
        letters = take_dead_letters(cluster.amqp_uri)
        print("[malformed] published {}, dead-letter queue depth {}, "
              "reasons {}".format(len(published), depth,
                                  Counter(reason for _, reason in letters)))
        problems = []
        if depth != MALFORMED or sorted(letters) != sorted(published.items()):
            problems.append(
                "dead-lettered {} messages, not the {} published, each with "
                "its reason".format(depth, MALFORMED))
        if not votes.alive:
            problems.append("the votes service died")
        return problems
    verify("malformed events", cluster, load, after=dead_letters)


# a consumer the broker stopped serving consumes again within this
SERVED_AGAIN_BOUND = (STALL_AFTER + STALL_CHECK_INTERVAL + STALL_ANSWER_TIMEOUT
                      + RECOVERY_TIMEOUT)


def served_anew(label, cluster, load, process, queue, problems):
    """The outcome checks of a consumer the broker stopped serving: its
    process said so in the log and in its metrics, every vote counted
    once, and no restart."""
    warned = "the broker stopped serving the consumer of " + queue
    if warned not in process.log_path.read_text():
        problems.append("no warning: " + warned)
    counted_as = queue.rstrip("-")  # the reply queue's, without its process id
    stalls = {labels: value for (name, labels), value in cluster.metrics(process).items()
              if name == "amqp_consumer_stalls_total" and ("queue", counted_as) in labels}
    if sum(stalls.values()) < 1:
        problems.append("amqp_consumer_stalls_total of {}: {}".format(counted_as, stalls))
    verify(label, cluster, load, problems)
    assert process.alive and len(cluster.processes) == 2


def test_consumer_the_broker_stops_serving(cluster):
    """The broker stops serving the votes service's consumer while votes
    keep coming: they queue, the service notices within STALL_AFTER +
    STALL_CHECK_INTERVAL + STALL_ANSWER_TIMEOUT of its last delivery,
    consumes anew on the same process, and every
    vote is counted once (those the old channel held come back when the
    broker drops it)."""
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(500)
        with consumer_unserved(cluster, VOTES_QUEUE) as channels:
            began = time.monotonic()
            time.sleep(2)  # batches already in workers end
            stalled = total(cluster.counted())
            time.sleep(3)
            still = total(cluster.counted())
            problems = within_recovery(began, {
                "votes applied again": cluster.counting_beyond(still),
            }, timeout=SERVED_AGAIN_BOUND)
            again = time.monotonic() - began
            load.wait_sent(500)
    print("\n[consumer not served] {} channel suspended; counted {} then {}; "
          "applying again after {:.1f}s".format(channels, stalled, still, again))
    if channels != 1 or still != stalled:
        problems.append("expected one consumer channel suspended and counting "
                        "stopped: {} channels, counted {} then {}".format(
                            channels, stalled, still))
    served_anew("consumer not served", cluster, load, votes, VOTES_QUEUE, problems)


@pytest.mark.parametrize("queue", [RPC_QUEUE, "rpc.reply-gateway-"],
                         ids=["votes RPC consumer", "gateway reply consumer"])
def test_a_read_consumer_the_broker_stops_serving(cluster, queue):
    """The same for the consumers a read goes through: the votes service's
    RPC consumer, and the gateway's RPC reply consumer (which asks once
    replies stop while reads wait). Reads are refused (503) while it is
    not served, and answered again once it consumes anew."""
    gateway = cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(200)
        post = load.accepted()[0].post
        with consumer_unserved(cluster, queue) as channels:
            began = time.monotonic()
            time.sleep(1.5)  # the gateway's read cache expires
            status, body = cluster.read_through_gateway(post)
            problems = within_recovery(began, {
                "GET /vote-counts answering": cluster.reading(load),
            }, timeout=SERVED_AGAIN_BOUND)
            again = time.monotonic() - began
            load.wait_sent(200)
    print("\n[{} not served] {} channel suspended; a read: {} {}; answered again "
          "after {:.1f}s".format(queue, channels, status, body, again))
    if channels != 1 or status != 503 or body.get("error") != "SERVICE_UNAVAILABLE":
        problems.append("expected one channel suspended and a read refused "
                        "meanwhile: {} channels, {} {}".format(channels, status, body))
    served_anew(queue + " not served", cluster, load,
                votes if queue == RPC_QUEUE else gateway, queue, problems)


def test_live_counts_consumer_the_broker_stops_serving(cluster):
    """The same for the gateway's live counts: a stream following a post
    gets nothing while the broker does not serve the feed's consumer, and
    the post's counts again once it consumes anew, on the same stream."""
    gateway = cluster.start_gateway()
    cluster.start_votes()
    vote = "{}/vote?postId=live&score=1".format(cluster.base_url)
    wait_until(lambda: "live counts: consuming" in gateway.log_path.read_text(),
               10, "the gateway's feed to connect")
    stream = Stream(cluster.web_port, "postId=live")
    try:
        assert stream.event()["event"] == "snapshot"
        with consumer_unserved(cluster, "evt-votes-counts_changed--gateway") as channels:
            began = time.monotonic()
            sent = 0
            stream.sock.settimeout(0.5)
            update = None
            while update is None and time.monotonic() - began < SERVED_AGAIN_BOUND:
                assert requests.post(vote, timeout=5).status_code == 202
                sent += 1
                try:
                    update = stream.event()
                except TimeoutError:
                    pass
            again = time.monotonic() - began
    finally:
        stream.close()
    print("\n[live counts not served] {} channel suspended; {} votes; first update "
          "after {:.1f}s: {}".format(channels, sent, again, update))
    assert channels == 1
    assert update is not None and update["event"] == "counts"
    # nothing came while the consumer was not served: its check waited for
    # an answer that never came
    assert again > STALL_ANSWER_TIMEOUT
    assert "the broker stopped serving the consumer of evt-votes-counts_changed" in (
        gateway.log_path.read_text())
    assert cluster.metrics(gateway)[("amqp_consumer_stalls_total", (
        ("queue", "evt-votes-counts_changed--gateway.live_counts"),
        ("reason", "no_answer")))] == 1
    wait_until(lambda: cluster.counted().get("live", {}).get("upvote") == sent,
               DRAIN_TIMEOUT, "every vote counted")
    assert gateway.alive and len(cluster.processes) == 2


def test_votes_terminated_while_the_broker_does_not_answer(cluster):
    """SIGTERM while the broker takes frames on the consumer's channel and
    never answers them: the stop gives up the consumer's cancel after
    CANCEL_WAIT, the consume loop gets KILL_WAIT more, and the process
    exits within SIGTERM_BOUND. Its votes are counted once by the next
    process."""
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(500)
        with consumer_unserved(cluster, VOTES_QUEUE) as channels:
            problems = terminate(votes, "SIGTERM votes, consumer unserved")
        cluster.start_votes()
        load.wait_sent(500)
    if channels != 1:
        problems.append("{} consumer channels suspended, not 1".format(channels))
    verify("SIGTERM votes, consumer unserved", cluster, load, problems)


def test_two_votes_processes(cluster):
    cluster.start_gateway()
    cluster.start_votes()
    cluster.start_votes(consumers=2)
    with cluster.load() as load:
        load.wait_sent(1000)
        consumers = cluster.queue_state(VOTES_QUEUE)[1]
        load.wait_sent(1000)
    problems = [] if consumers == 2 else [
        "{} consumers on the votes queue, not 2".format(consumers)]
    verify("two votes processes", cluster, load, problems)


def test_scale_out_two_gateways_three_votes_processes(cluster):
    second = find_free_port()
    cluster.start_gateway()
    cluster.start_gateway(web_port=second)
    for consumers in (1, 2, 3):
        cluster.start_votes(consumers=consumers)
    gateways = [cluster.base_url, "http://127.0.0.1:{}".format(second)]
    with cluster.load(base_urls=gateways, clients=16, rate=1500) as load:
        load.wait_sent(6000)
        consumers = cluster.queue_state(VOTES_QUEUE)[1]
    per_gateway = Counter(a.url for a in load.accepted())
    problems = [] if consumers == 3 else [
        "{} consumers on the votes queue, not 3".format(consumers)]
    problems += ["{} took {} votes".format(url, per_gateway[url + "/vote"])
                 for url in gateways if per_gateway[url + "/vote"] < 2000]
    verify("2 gateways, 3 votes processes", cluster, load, problems)


def test_votes_terminated_while_rabbitmq_down(cluster):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load(unique=True) as load:
        load.wait_sent(800)
        with rabbitmq_stopped(cluster) as outage:
            time.sleep(1)
            problems = terminate(votes, "SIGTERM votes, RabbitMQ down")
        cluster.start_votes()
        load.wait_sent(800)
    verify("SIGTERM votes, RabbitMQ down", cluster, load, problems,
           refusals=True,
           in_doubt=load.refused_in_flight(outage.going, outage.gone))
