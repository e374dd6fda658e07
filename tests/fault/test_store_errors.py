"""Redis errors that are not outages: a private redis-server runs out of
memory mid-stream. Votes keep getting 202, none is dead-lettered, and once
Redis has room again every vote answered 202 is counted exactly once.

Does not touch the machine's RabbitMQ or Redis (only a vhost of its own and
a private redis-server)."""
import time

from tests.fault.harness import (
    nothing_dead_lettered,
    store_fault,
    verify,
    within_recovery,
)

OOM_SECONDS = 8  # far longer than the 5 tries (~1.5 s) of an unexpected error


def test_redis_out_of_memory_mid_stream(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    with cluster.load() as load:
        load.wait_sent(400)
        filler = private_redis.fill_until_oom()
        # the votes service meets OOM and keeps retrying
        problems, counted, figures = store_fault(cluster, votes, load, ("OOM",),
                                                 OOM_SECONDS)
        private_redis.set_maxmemory(private_redis.used_memory() + (64 << 20))
        problems += within_recovery(time.monotonic(), {
            "votes applied again": cluster.counting_beyond(counted),
        }, label="Redis OOM")
        load.wait_sent(400)
    print("\n[Redis OOM] {} filler keys; {}".format(filler, figures))
    verify("Redis OOM", cluster, load, problems,
           after=lambda: nothing_dead_lettered(cluster, votes))
