"""Redis errors that are not outages: a private redis-server runs out of
memory mid-stream. Votes keep getting 202, none is dead-lettered, and once
Redis has room again every vote answered 202 is counted exactly once.

Does not touch the machine's RabbitMQ or Redis (only a vhost of its own and
a private redis-server)."""
import time

from tests.fault.harness import (
    DEAD_LETTER_QUEUE,
    total,
    verify,
    wait_until,
)

OOM_SECONDS = 8  # far longer than the 5 tries (~1.5 s) of an unexpected error


def store_errors(cluster, votes, kind):
    return cluster.metrics(votes).get(
        ("votes_store_errors_total", (("kind", kind),)), 0)


def test_redis_out_of_memory_mid_stream(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(400)
        filler = private_redis.fill_until_oom()
        oom_since = time.monotonic()
        accepted_at_oom = len(load.accepted())
        # the votes service meets OOM and keeps retrying
        wait_until(lambda: store_errors(cluster, votes, "OOM") > 0, 10,
                   "the votes service to meet OOM")
        time.sleep(1)  # events in flight at the fill settle either way
        counted_in_oom = total(cluster.counted())
        time.sleep(max(0, oom_since + OOM_SECONDS - time.monotonic()))
        counted_late_in_oom = total(cluster.counted())
        accepted_in_oom = len(load.accepted()) - accepted_at_oom
        dead_in_oom = cluster.queue_messages(DEAD_LETTER_QUEUE)
        oom_errors = store_errors(cluster, votes, "OOM")
        private_redis.set_maxmemory(private_redis.used_memory() + (64 << 20))
        load.wait_sent(400)
    print("\n[Redis OOM] {} filler keys; {} votes answered 202 during {} s of "
          "OOM; {} OOM errors met; counted {} then {} during OOM".format(
              filler, accepted_in_oom, OOM_SECONDS, oom_errors,
              counted_in_oom, counted_late_in_oom))
    problems = []
    if counted_late_in_oom != counted_in_oom:
        problems.append("votes were counted while Redis refused writes "
                        "({} -> {}): OOM did not hold".format(
                            counted_in_oom, counted_late_in_oom))
    if accepted_in_oom < 500:
        problems.append("only {} votes answered 202 during OOM".format(
            accepted_in_oom))
    if dead_in_oom:
        problems.append("{} messages dead-lettered during OOM".format(dead_in_oom))

    def nothing_dead_lettered():
        dead = cluster.queue_messages(DEAD_LETTER_QUEUE)
        if dead:
            return ["{} messages in {}".format(dead, DEAD_LETTER_QUEUE)]
        dead = cluster.metrics(votes).get(("votes_dead_lettered_total", ()))
        if dead != 0:
            return ["votes_dead_lettered_total is {}".format(dead)]
        return []

    verify("Redis OOM", cluster, load, problems, after=nothing_dead_lettered)
