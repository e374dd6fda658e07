"""A private Redis Sentinel setup: a master and two replicas
(``redis-server --replicaof``) and three ``redis-sentinel`` processes
(quorum 2) on free loopback ports, files in a folder; stopped by pid."""
import redis
from redis.sentinel import Sentinel

from harness.process import START_TIMEOUT, Process, free_port, wait_until
from harness.redis_cluster import node_client, start_servers
from services.platform.redis_nodes import replicas_in_sync

SERVICE = "mymaster"
QUORUM = 2
DOWN_AFTER_MS = 2000     # a master that does not answer for this is down
FAILOVER_TIMEOUT_MS = 5000
FAILOVER_TIMEOUT = 60    # seconds: a replica promoted and the sentinels agree


class RedisSentinelServers:
    """``servers[0]`` starts as the master, the others as its replicas;
    ``sentinels`` watch it. ``uri`` is the services' redis+sentinel URI."""

    def __init__(self, folder, replicas=2, sentinels=3):
        self.folder = folder / "redis-sentinel"
        self.folder.mkdir(exist_ok=True)
        self.ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        master = self.ports[0]
        self.servers = [self._server(port, None if port == master else master)
                        for port in self.ports]
        self.sentinels = [self._sentinel(port, master) for port in self.sentinel_ports]
        self.uri = "redis+sentinel://{}/{}/0".format(
            ",".join("127.0.0.1:{}".format(p) for p in self.sentinel_ports), SERVICE)

    @property
    def nodes(self):
        return self.servers + self.sentinels

    def _server(self, port, master):
        folder = self.folder / str(port)
        folder.mkdir(exist_ok=True)
        replica_of = ["--replicaof", "127.0.0.1", str(master)] if master else []
        return Process("redis-{}".format(port), [
            "redis-server", "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(folder), "--save", "", "--appendonly", "no",
            "--daemonize", "no", *replica_of,
        ], folder / "redis.log")

    def _sentinel(self, port, master):
        folder = self.folder / "sentinel-{}".format(port)
        folder.mkdir(exist_ok=True)
        config = folder / "sentinel.conf"  # the sentinel rewrites it
        config.write_text("\n".join([
            "port {}".format(port),
            "bind 127.0.0.1",
            "dir {}".format(folder),
            "sentinel monitor {} 127.0.0.1 {} {}".format(SERVICE, master, QUORUM),
            "sentinel down-after-milliseconds {} {}".format(SERVICE, DOWN_AFTER_MS),
            "sentinel failover-timeout {} {}".format(SERVICE, FAILOVER_TIMEOUT_MS),
            "sentinel parallel-syncs {} 1".format(SERVICE),
            "",
        ]))
        return Process("sentinel-{}".format(port),
                       ["redis-server", str(config), "--sentinel"],
                       folder / "sentinel.log")

    def client(self, **options):
        """A client of the master the sentinels name now (redis-py's own)."""
        sentinel = Sentinel([("127.0.0.1", p) for p in self.sentinel_ports],
                            socket_timeout=5)
        return sentinel.master_for(SERVICE, decode_responses=True, socket_timeout=5,
                                   **options)

    def start(self):
        start_servers(self.ports, self.servers)
        self.wait_replicated(self.ports[0], len(self.ports) - 1)
        for process in self.sentinels:
            process.start()
        wait_until(self._watching, START_TIMEOUT,
                   "every sentinel to know the master, its replicas and the "
                   "other sentinels", interval=0.2)
        return self

    def _watching(self):
        """Whether each sentinel names the first master, with every replica
        and every other sentinel known (so that a failover can be agreed)."""
        for port, process in zip(self.sentinel_ports, self.sentinels, strict=True):
            assert process.alive, "sentinel exited:\n" + process.tail()
            try:
                with node_client(port) as client:
                    state = client.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if (int(state["port"]) != self.ports[0]
                    or state["num-slaves"] != len(self.ports) - 1
                    or state["num-other-sentinels"] != len(self.sentinel_ports) - 1):
                return False
        return True

    def wait_replicated(self, master, replicas, timeout=FAILOVER_TIMEOUT):
        """Until the server on ``master`` has ``replicas`` replicas online."""
        def synced():
            try:
                with node_client(master) as client:
                    return replicas_in_sync(client)[1] >= replicas
            except redis.RedisError:
                return False
        wait_until(synced, timeout, ":{} to have {} replicas online".format(
            master, replicas))

    def master_port(self):
        """The master's port, as the first live sentinel names it."""
        for port, process in zip(self.sentinel_ports, self.sentinels, strict=True):
            if process.alive:
                with node_client(port) as client:
                    return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        raise AssertionError("no sentinel lives")

    def role(self, port):
        with node_client(port) as client:
            return client.info("replication")["role"]

    def kill(self, port):
        """kill -9 the redis-server on ``port``."""
        self.servers[self.ports.index(port)].kill()

    def wait_failover(self, old, timeout=FAILOVER_TIMEOUT):
        """Until the sentinels name another master than ``old`` and it says
        it is one; its port."""
        def promoted():
            try:
                port = self.master_port()
                return port if port != old and self.role(port) == "master" else None
            except redis.RedisError:
                return None
        return wait_until(promoted, timeout, "a replica to take over from :{}".format(old))

    def stop(self):
        for process in self.nodes:
            process.kill()
