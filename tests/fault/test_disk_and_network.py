"""A full disk and a network partition, mid-stream.

- RabbitMQ's disk alarm (its free-space limit raised above what is free on
  the tests' private node) blocks every publisher: votes are answered 503
  within the bound, and flow again once it clears.
- Redis with its AOF on a 4 MB tmpfs, filled until Redis refuses writes
  (MISCONF): votes keep getting 202, nothing is dead-lettered, and counting
  resumes once a filler file on the same disk is deleted.
- Redis on a link of its own (a network namespace and a veth pair), the
  link cut for seconds: the votes service cannot reach it but keeps
  running and consuming; votes keep getting 202 and are counted once the
  link is back.

Every vote answered 202 counted exactly once (harness.verify); recovery
times printed. Needs root (mount, ip netns), as the private RabbitMQ node
does. Touches neither the machine's RabbitMQ nor its Redis, nor the
loopback the other test runs share.
"""
import shutil
import time
from types import SimpleNamespace

import pytest
import redis

from harness.netns import NetNamespace
from harness.process import Process
from harness.redis_server import RedisServer
from harness.tmpfs import Tmpfs
from tests.fault.harness import (
    VOTES_QUEUE,
    nothing_dead_lettered,
    store_errors,
    store_fault,
    verify,
    wait_until,
    within_recovery,
)

FAULT_SECONDS = 8       # how long each fault lasts
MIN_ACCEPTED = 500      # votes answered 202 during a Redis fault, at least
DISK_SIZE = "4m"
FILLER = 2 << 20        # bytes set aside on the disk, freed to end the fault
FILL_VALUE = 64 << 10   # bytes of each key Redis fills its disk with
UNREACHABLE = ("TIMEOUT", "CONNECTION")  # the store's errors for a Redis cut off
MIN_TRIES = 3           # the back-off (0.1 s, doubling) tries more often in FAULT_SECONDS
ALARM_MARGIN = 1.0      # s: publishes read before the alarm may still be confirmed


class DiskRedis(RedisServer):
    """AOF on (``appendfsync everysec``, as compose runs it), its folder a
    small tmpfs of its own."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec")
        self.disk = Tmpfs(self.dir, DISK_SIZE)

    def start(self):
        self.disk.mount()
        super().start()

    def kill(self):
        try:
            super().kill()
        finally:
            self.disk.unmount()

    def fill_until_refused(self, max_keys=1000):
        """Write ``fill:<n>`` keys until Redis refuses one with MISCONF (its
        AOF cannot be written); returns the keys written."""
        with self.client() as client:
            for n in range(max_keys):
                try:
                    client.set("fill:{}".format(n), "x" * FILL_VALUE)
                except redis.ResponseError as exc:
                    if str(exc).startswith("MISCONF"):
                        return n
                    raise
        raise AssertionError("Redis took {} keys on a {} disk".format(max_keys, DISK_SIZE))

    def takes_writes(self):
        try:
            with self.client() as client:
                return client.set("probe", 1)
        except redis.ResponseError:
            return False


class PartitionedRedis(RedisServer):
    """redis-server in a network namespace of its own, which the services
    reach through a veth pair only. The test itself reads it on a unix
    socket, which the partition does not cut."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, "--appendonly", "no")
        self.net = NetNamespace()
        self.socket = self.dir / "redis.sock"

    def start(self):
        self.net.create()
        self.uri = "redis://{}:{}/0".format(self.net.address, self.port)
        argv = list(self.process.argv)
        argv[argv.index("--bind") + 1] = self.net.address
        argv += ["--protected-mode", "no", "--unixsocket", str(self.socket),
                 "--unixsocketperm", "700"]
        self.process = Process("redis", self.net.command(argv), self.process.log_path)
        super().start()

    def client(self, **options):
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True,
                           socket_timeout=5, **options)

    def kill(self):
        try:
            super().kill()
        finally:
            self.net.destroy()


REDIS_KINDS = {"aof on a small disk": DiskRedis, "on a link of its own": PartitionedRedis}


@pytest.fixture
def private_redis(request, tmp_path):
    """The conftest's, or one of REDIS_KINDS (indirect parametrization);
    its mount or namespace removed whatever happens."""
    server = REDIS_KINDS.get(getattr(request, "param", None), RedisServer)(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def timed_read(cluster, load):
    """(status, error code or the counts, seconds) of GET /vote-counts of
    a post that has votes."""
    started = time.monotonic()
    status, body = cluster.read_through_gateway(load.accepted()[0].post)
    if isinstance(body, dict) and "error" in body:
        body = body["error"]
    return status, body, round(time.monotonic() - started, 2)


@pytest.mark.parametrize("private_redis", ["aof on a small disk"], indirect=True)
def test_redis_disk_full_mid_stream(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    disk = private_redis.disk
    filler, _ = disk.fill("filler", FILLER)
    with cluster.load() as load:
        load.wait_sent(400)
        keys = private_redis.fill_until_refused()
        problems, counted, figures = store_fault(
            cluster, votes, load, ("MISCONF",), FAULT_SECONDS, MIN_ACCEPTED)
        read = timed_read(cluster, load)
        filler.unlink()
        problems += within_recovery(time.monotonic(), {
            "Redis taking writes": private_redis.takes_writes,
            "votes applied again": cluster.counting_beyond(counted),
        }, label="Redis disk full")
        load.wait_sent(400)
    print("\n[Redis disk full] {} filler keys filled the disk; {}; {} bytes free "
          "once the filler went; a read while full: {}".format(
              keys, figures, disk.free(), read))
    if read[0] != 200:
        problems.append("a read while the disk was full: {}".format(read))
    verify("Redis disk full", cluster, load, problems,
           after=lambda: nothing_dead_lettered(cluster, votes))


@pytest.mark.parametrize("private_redis", ["on a link of its own"], indirect=True)
def test_redis_partitioned_mid_stream(cluster, private_redis):
    cluster.start_gateway()
    votes = cluster.start_votes()
    net = private_redis.net
    with cluster.load() as load:
        load.wait_sent(400)
        net.partition()
        problems, counted, figures = store_fault(
            cluster, votes, load, UNREACHABLE, FAULT_SECONDS, MIN_ACCEPTED)
        read = timed_read(cluster, load)
        tries = sum(store_errors(cluster, votes, kind) for kind in UNREACHABLE)
        consumers = cluster.queue_state(VOTES_QUEUE)[1]
        alive = votes.alive
        net.heal()
        problems += within_recovery(time.monotonic(), {
            "votes applied again": cluster.counting_beyond(counted),
            "GET /vote-counts answering": cluster.reading(load),
        }, label="Redis partitioned")
        load.wait_sent(400)
    print("\n[Redis partitioned] {}; at the end of the cut: {} consumers, the votes "
          "process alive: {}; a read: {}".format(figures, consumers, alive, read))
    if read[:2] != (503, "SERVICE_UNAVAILABLE"):
        problems.append("a read during the partition: {}".format(read))
    if tries < MIN_TRIES:
        problems.append("only {} failed tries in {} s cut off: writes stuck on a dead "
                        "connection rather than timed out and retried".format(
                            tries, FAULT_SECONDS))
    if not (alive and consumers >= 1):
        problems.append("the votes service stopped consuming during the partition: "
                        "alive {}, {} consumers".format(alive, consumers))

    def still_the_same_process():
        found = nothing_dead_lettered(cluster, votes)
        if not votes.alive:
            found.append("the votes process exited:\n" + votes.tail())
        return found
    verify("Redis partitioned", cluster, load, problems, after=still_the_same_process)


def disk_alarms(cluster):
    return cluster.broker.ctl("eval", "rabbit_alarm:get_alarms().").stdout.count("disk")


def test_rabbitmq_disk_alarm_mid_stream(cluster):
    cluster.start_gateway()
    cluster.start_votes()
    node = cluster.broker
    alarm = SimpleNamespace()
    # a post per vote: a refused vote the broker kept anyway shows alone
    with cluster.load(unique=True) as load:
        load.wait_sent(600)
        try:
            alarm.raising = time.monotonic()
            node.ctl("set_disk_free_limit", str(2 * shutil.disk_usage(node.dir).free))
            wait_until(lambda: disk_alarms(cluster), 10, "RabbitMQ's disk alarm")
            alarm.raised = time.monotonic()
            time.sleep(max(0, alarm.raised + FAULT_SECONDS - time.monotonic()))
        finally:
            alarm.clearing = time.monotonic()
            node.ctl("set_disk_free_limit", "50MB")  # as RabbitNode has it
        wait_until(lambda: not disk_alarms(cluster), 10, "the disk alarm to clear")
        alarm.cleared = time.monotonic()
        problems = within_recovery(alarm.cleared, {
            "the gateway accepting votes": load.accepting_since(alarm.cleared),
            "the votes service consuming": cluster.consuming(),
            "GET /vote-counts answering": cluster.reading(load),
        }, label="RabbitMQ disk alarm")
        load.wait_sent(600)
    during = [a for a in load.answers
              if alarm.raised + ALARM_MARGIN <= a.started + a.latency < alarm.clearing]
    accepted = [a for a in during if a.status == 202]
    resumed = min((a.started + a.latency for a in load.accepted()
                   if a.started + a.latency >= alarm.clearing), default=None)
    print("\n[RabbitMQ disk alarm] raised {:.1f}s after asked, seen cleared {:.1f}s "
          "after asked; {} votes answered during the alarm: {} 202, {} 503; the "
          "first 202 after it {:.1f}s after the clear was asked".format(
              alarm.raised - alarm.raising, alarm.cleared - alarm.clearing,
              len(during), len(accepted), sum(a.status == 503 for a in during),
              (resumed or alarm.clearing) - alarm.clearing))
    if accepted:
        problems.append("{} of {} votes answered 202 while the disk alarm blocked "
                        "publishers, e.g. {}".format(len(accepted), len(during),
                                                     accepted[:3]))
    if not during:
        problems.append("no vote was answered while the disk alarm lasted")
    verify("RabbitMQ disk alarm", cluster, load, problems, refusals=True,
           in_doubt=load.refused_in_flight(alarm.raising, alarm.cleared))
