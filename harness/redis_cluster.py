"""A private Redis Cluster: six redis-server processes on free loopback
ports (three masters, three replicas), made one cluster with
``redis-cli --cluster create``; stopped by pid."""
import socket
import subprocess
import time

import redis
from redis.cluster import RedisCluster

from harness.process import START_TIMEOUT, Process, free_port, wait_until

BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
NODE_TIMEOUT_MS = 2000  # cluster-node-timeout: a dead master fails over after about this
CLUSTER_TIMEOUT = 60    # cluster_state:ok after create, reshard or failover


def _free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def node_client(port, **options):
    """A client of the redis-server (or sentinel) on loopback ``port``."""
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                       socket_timeout=5, **options)


def answers(port, **options):
    try:
        with node_client(port, **options) as client:
            return client.ping()
    except redis.RedisError:
        return False


def start_servers(ports, processes, **options):
    """Start the redis-server ``processes``; wait until each answers on
    its port (``options``: the client's, TLS or a password)."""
    for process in processes:
        process.start()
    for port, process in zip(ports, processes, strict=True):
        def up(port=port, process=process):
            assert process.alive, "redis-server exited:\n" + process.tail()
            return answers(port, **options)
        wait_until(up, START_TIMEOUT, "redis-server :{}".format(port), interval=0.05)


def free_ports_in(ports, count):
    """``count`` ports of ``ports`` that are free, their bus ports too."""
    found = [port for port in ports if _free(port) and _free(port + BUS_OFFSET)]
    assert len(found) >= count, "fewer than {} free ports in {}".format(count, ports)
    return found[:count]


class RedisClusterServers:
    """``ports``: the six ports (free ones by default). ``nodes[i]`` is
    node i's Process; ``uri`` names the first node (any node will do).
    ``tls`` (harness.tls.TestCA): every node on TLS only, clients, the
    cluster bus and replication, the URI ``rediss://`` with the CA in its
    ``ssl_ca_certs``; ``password``: every node's (and its masters')."""

    def __init__(self, folder, ports=None, masters=3, replicas=1, tls=None,
                 password=None):
        self.folder = folder / "redis-cluster"
        self.folder.mkdir(exist_ok=True)
        count = masters * (1 + replicas)
        self.ports = list(ports) if ports else [free_port() for _ in range(count)]
        self.replicas = replicas
        self.tls = tls
        self.password = password
        self.client_options = {}  # of every client of a node
        self.cli_options = []
        self.uri = "redis://127.0.0.1:{}/0".format(self.ports[0])
        if tls is not None:
            self.client_options.update(ssl=True, ssl_ca_certs=str(tls.ca))
            self.cli_options += ["--tls", "--cacert", str(tls.ca)]
            self.uri = "rediss://127.0.0.1:{}/0?ssl_ca_certs={}".format(
                self.ports[0], tls.ca)
        if password is not None:
            self.client_options["password"] = password
            self.cli_options += ["--no-auth-warning", "-a", password]
            self.uri = self.uri.replace("://", "://:{}@".format(password), 1)
        self.nodes = [self._node(port) for port in self.ports]

    def _node(self, port):
        folder = self.folder / str(port)
        folder.mkdir(exist_ok=True)
        listen = ["--port", str(port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(port),
                      "--tls-cluster", "yes", "--tls-replication", "yes",
                      "--tls-cert-file", str(self.tls.server_cert),
                      "--tls-key-file", str(self.tls.server_key),
                      "--tls-ca-cert-file", str(self.tls.ca),
                      "--tls-auth-clients", "no"]
        if self.password is not None:
            listen += ["--requirepass", self.password, "--masterauth", self.password]
        return Process("redis-{}".format(port), [
            "redis-server", "--bind", "127.0.0.1", *listen,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--dir", str(folder), "--save", "", "--appendonly", "no",
            "--daemonize", "no",
        ], folder / "redis.log")

    def node_client(self, port, **options):
        return node_client(port, **dict(self.client_options, **options))

    def client(self, **options):
        """A RedisCluster client (any node's address will do)."""
        return RedisCluster(host="127.0.0.1", port=self.ports[0],
                            decode_responses=True, socket_timeout=5,
                            **dict(self.client_options, **options))

    def start(self):
        start_servers(self.ports, self.nodes, **self.client_options)
        self.cli("--cluster", "create",
                 *["127.0.0.1:{}".format(port) for port in self.ports],
                 "--cluster-replicas", str(self.replicas), "--cluster-yes")
        self.wait_ok()
        return self

    def cli(self, *args, timeout=300):
        """redis-cli with ``args``; its output (raises if it fails)."""
        done = subprocess.run(["redis-cli", *self.cli_options, *args],
                              capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, "redis-cli {} failed:\n{}{}".format(
            " ".join(args[:2]), done.stdout[-3000:], done.stderr[-3000:])
        return done.stdout

    def cluster_info(self, port):
        with self.node_client(port) as client:
            return client.cluster("info")

    def wait_ok(self, timeout=CLUSTER_TIMEOUT):
        """Until every live node says cluster_state:ok, all slots are
        served and each master has its replicas (as far as they live)."""
        def ok():
            for port, node in zip(self.ports, self.nodes, strict=True):
                if not node.alive:
                    continue
                try:
                    info = self.cluster_info(port)
                except redis.RedisError:
                    return False
                if info.get("cluster_state") != "ok" or \
                        int(info.get("cluster_slots_ok", 0)) != 16384:
                    return False
            return True
        wait_until(ok, timeout, "cluster_state:ok on every node", interval=0.1)

    def roles(self):
        """{port: "master" | "slave"} of the live nodes, as each says."""
        roles = {}
        for port, node in zip(self.ports, self.nodes, strict=True):
            if node.alive:
                with self.node_client(port) as client:
                    roles[port] = client.info("replication")["role"]
        return roles

    def masters(self):
        return sorted(port for port, role in self.roles().items() if role == "master")

    def master_of_slot(self, slot):
        """The port of the master serving ``slot``, as the first live node says."""
        port = next(p for p, n in zip(self.ports, self.nodes, strict=True) if n.alive)
        with self.node_client(port) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError("slot {} is not served".format(slot))

    def replicas_of(self, port):
        """The ports of the replicas of the master on ``port``, as it says."""
        with self.node_client(port) as client:
            info = client.info("replication")
        return sorted(int(value["port"]) for key, value in info.items()
                      if key.startswith("slave") and isinstance(value, dict))

    def node_id(self, port):
        with self.node_client(port) as client:
            return client.execute_command("CLUSTER", "MYID")

    def kill_node(self, port):
        """kill -9 the node on ``port``."""
        self.nodes[self.ports.index(port)].kill()

    def restart_node(self, port):
        """Start the node on ``port`` again, with its nodes.conf: it rejoins
        (a failed-over master as a replica of its successor)."""
        node = self.nodes[self.ports.index(port)]
        node.start()
        wait_until(lambda: answers(port, **self.client_options), START_TIMEOUT,
                   "redis-server :{} again".format(port), interval=0.05)

    def slots_of(self, port):
        """The slots the master on ``port`` serves, as the first live node says."""
        live = next(p for p, n in zip(self.ports, self.nodes, strict=True) if n.alive)
        with self.node_client(live) as client:
            return [slot for start, end, master, *_ in
                    client.execute_command("CLUSTER", "SLOTS")
                    if int(master[1]) == port for slot in range(start, end + 1)]

    def wait_failover(self, port, slot, timeout=CLUSTER_TIMEOUT):
        """Until another node serves ``slot`` of the dead master on ``port``
        and the live nodes say cluster_state:ok; the seconds it took."""
        started = time.monotonic()

        def moved():
            try:
                return self.master_of_slot(slot) != port
            except (redis.RedisError, AssertionError):
                return False
        wait_until(moved, timeout, "a replica to take over from :{}".format(port))
        self.wait_ok(timeout)
        return time.monotonic() - started

    def wait_replicated(self, timeout=CLUSTER_TIMEOUT):
        """Until every master has ``replicas`` replicas in sync."""
        def synced():
            for port in self.masters():
                with self.node_client(port) as client:
                    info = client.info("replication")
                if int(info.get("connected_slaves", 0)) < self.replicas:
                    return False
                for i in range(self.replicas):
                    if info.get("slave{}".format(i), {}).get("state") != "online":
                        return False
            return True
        wait_until(synced, timeout, "every master to have its replicas online")

    def stop(self):
        for node in self.nodes:
            node.kill()
