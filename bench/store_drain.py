"""Drain by event size, on one Redis and on a Redis Cluster: vote_cast
events of a given size are queued straight into the votes queue (no
gateway), then one votes process is started and timed until Redis holds
them all.

    python -m bench.store_drain [--stores single,cluster] [--sizes 10,500]
                                [--votes 100000] [--posts 1000]

Each row has a vhost, a Redis (a private redis-server with the bench's
options, or a private six-node cluster) and a votes process of its own.
The rate counts from the first vote seen in Redis to the last, as the
bench's drain rows do. The figures are noisy on a shared machine: compare
rows of one run as ratios.
"""
import argparse
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Producer

from bench.machine import cpu_seconds, wait_quiet
from harness import rabbit
from harness.process import VOTES, Process, free_port, wait_until, write_config
from harness.redis_server import RedisServer
from services import contracts

AMQP_HOST = "127.0.0.1:5672"
REDIS_OPTIONS = ("--appendonly", "yes", "--appendfsync", "everysec")
CLUSTER_PORTS = range(7100, 7200)  # and their buses, + 10000
SETTLE_TIMEOUT = 300
POLL = 0.05
STORES = ("single", "cluster")
SIZES = (10, 500)  # votes per event: small and large


def _events(total, size, posts, rng):
    ts = time.time_ns() // 1000
    for start in range(0, total, size):
        votes = []
        for k in range(start, min(total, start + size)):
            votes.append({"voteId": uuid.uuid4().hex, "postId": rng.choice(posts),
                          "score": -1 if k % 4 == 3 else 1, "ts": ts + k})
        yield {"id": uuid.uuid4().hex, "votes": votes}


def _publish(amqp_uri, events):
    exchange = Exchange(contracts.EVENTS_EXCHANGE, type="topic", durable=True)
    count = 0
    with Connection(amqp_uri) as connection:
        producer = Producer(connection.channel())
        for event in events:
            producer.publish(event, exchange=exchange, routing_key=contracts.VOTE_CAST,
                             serializer="json", delivery_mode=2)
            count += 1
    return count


class Store:
    """A private Redis or Redis Cluster for one row."""

    def __init__(self, kind, folder):
        self.kind = kind
        if kind == "single":
            self.server = RedisServer(folder, *REDIS_OPTIONS)
            self.server.start()
            self.uri = self.server.uri
        else:
            from harness.redis_cluster import RedisClusterServers, free_ports_in
            self.server = RedisClusterServers(folder, free_ports_in(CLUSTER_PORTS, 6))
            self.server.start()
            self.server.wait_replicated()
            self.uri = self.server.uri

    def client(self):
        return self.server.client()

    def counted(self, client, posts, post_key=contracts.post_key):
        total = 0
        with client.pipeline(transaction=False) as pipe:
            for post in posts:
                pipe.hmget(post_key(post), "upvote", "downvote")
            for up, down in pipe.execute():
                total += int(up or 0) + int(down or 0)
        return total

    def stop(self):
        if self.kind == "single":
            self.server.kill()
        else:
            self.server.stop()


def drain(store, size, total, n_posts, base_config, folder, vhosts, root=None,
          post_key=contracts.post_key, quiet=True):
    """(votes/s, CPU s per vote, events, seconds from start) of one row;
    its posts are its own, so rows can share a store. ``root``: the
    checkout whose votes service runs (by default this one); ``post_key``:
    its key of a post's counts; ``quiet``: start it once the machine is
    idle (wait_quiet), as CPU per vote is measured."""
    vhost = vhosts.take()
    amqp_uri = rabbit.amqp_uri(AMQP_HOST, vhost)
    client = store.client()
    votes = None
    try:
        config = write_config(folder / "votes.yml", amqp_uri, store.uri, free_port(),
                              base=base_config, log_level="WARNING")
        votes = Process.nameko("votes", VOTES, config, folder / "votes.log",
                               **({"cwd": root} if root else {}))
        # once, so that it declares its queue; then stopped
        votes.start()
        wait_until(lambda: rabbit.queue_state(amqp_uri, contracts.VOTES_QUEUE)[1] >= 1,
                   60, "the votes service to consume")
        votes.stop()
        posts = ["d{}-{}".format(size, i) for i in range(n_posts)]
        events = _publish(amqp_uri, _events(total, size, posts, random.Random(size)))
        if quiet:
            wait_quiet()
        start = time.perf_counter()
        votes.start()
        first = first_count = done = None
        cpu_first = cpu_done = None
        deadline = start + SETTLE_TIMEOUT
        while time.perf_counter() < deadline:
            got = store.counted(client, posts, post_key)
            now = time.perf_counter()
            cpu = cpu_seconds(votes.pid)
            if got and first is None:
                first, first_count, cpu_first = now, got, cpu
            if got >= total:
                done, cpu_done = now, cpu
                assert got == total, "{} counted, {} queued".format(got, total)
                break
            time.sleep(POLL)
        assert done is not None, "not all {} votes counted in {} s".format(
            total, SETTLE_TIMEOUT)
        if done - first > 0.2:
            rate = (total - first_count) / (done - first)
            cpu_per_vote = (cpu_done - cpu_first) / (total - first_count)
        else:  # start-up included
            rate = total / (done - start)
            cpu_per_vote = cpu_done / total
        return rate, cpu_per_vote, events, done - start
    finally:
        if votes is not None:
            votes.kill()
        client.close()
        vhosts.release(vhost)


def rows(stores, sizes, total, posts, base_config, quiet=True):
    """[(what, figure, how)] for each store and size."""
    folder = Path(tempfile.mkdtemp(prefix="store-drain-"))
    vhosts = rabbit.VhostPool(prefix="bench", batch=1)
    out = []
    try:
        for kind in stores:
            (folder / kind).mkdir()
            store = Store(kind, folder / kind)
            try:
                for size in sizes:
                    row = folder / "{}-{}".format(kind, size)
                    row.mkdir()
                    rate, cpu_per_vote, events, seconds = drain(
                        store, size, total, posts, base_config, row, vhosts, quiet=quiet)
                    out.append((
                        "drain, {}, events of {} votes".format(
                            "Redis Cluster 3+3" if kind == "cluster" else "one Redis", size),
                        "{:,.0f} votes/s".format(rate),
                        "{:,} votes in {:,} events over {:,} posts, all in {:.1f} s "
                        "from process start; one votes process, {:.1f} CPU s per "
                        "100k votes".format(total, events, posts, seconds,
                                            cpu_per_vote * 100_000)))
                    print("{}: {} ({})".format(*out[-1]), flush=True)
            finally:
                store.stop()
    finally:
        vhosts.close(patience=60)
        shutil.rmtree(folder, ignore_errors=True)
    return out


def run(bench):
    """The rows in the bench's table (``python -m bench``)."""
    for what, figure, how in rows(STORES, SIZES, bench.p["store_drain_votes"], 1000,
                                  bench.env.config_path, bench.p["quiet_drains"]):
        bench.row(what, figure, "", "events queued straight into the votes queue; "
                  "start votes; poll Redis every {:.0f} ms".format(POLL * 1000), how)


def main(argv=None):
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(prog="python -m bench.store_drain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--config", default=str(root / "config.yml"))
    args = parser.parse_args(argv)
    rows(args.stores.split(","), [int(s) for s in args.sizes.split(",")],
         args.votes, args.posts, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
