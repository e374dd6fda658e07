"""A RabbitMQ cluster of extra nodes on this machine, beside the one on 5672.

Each node is a ``rabbitmq-server`` of its own: node name ``<prefix><i>@localhost``,
AMQP port ``first_port + i - 1`` and distribution port ``first_dist_port + i - 1``
on 127.0.0.1, a config file of its own (the machine's rabbitmq.conf pins its
listener to 5672), data and logs under a temporary directory owned by the
``rabbitmq`` user. They run as that user, so they share its Erlang cookie,
and rabbitmqctl (which runs as that user too) reaches them by ``-n``.
Nodes 2..n join node 1 with ``rabbitmqctl join_cluster``. Everything is
stopped by pid; the node on 5672 is never named, so never touched.

No pytest here: the bench uses it too.
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.process import wait_until
from harness.rabbit import rabbitmqctl

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
USER = "rabbitmq"
BOOT_TIMEOUT = 120   # one node up and its app running
STOP_TIMEOUT = 15    # a node gone after SIGTERM, before SIGKILL


class Node:
    def __init__(self, base, prefix, index, port, dist_port):
        self.name = "{}{}@localhost".format(prefix, index)
        self.index = index
        self.port = port
        self.dist_port = dist_port
        self.config = base / "node{}.conf".format(index)
        self.mnesia = base / "mnesia{}".format(index)
        self.logs = base / "log{}".format(index)
        self.pid_file = base / "node{}.pid".format(index)
        self.plugins = base / "plugins{}".format(index)
        self.pid = None
        self.app_running = False

    def uri(self, vhost="/"):
        vhost = "%2F" if vhost == "/" else vhost
        return "amqp://guest:guest@127.0.0.1:{}/{}".format(self.port, vhost)

    @property
    def alive(self):
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # not a zombie, nor a reused pid: the VM of this node has its name
        try:
            with open("/proc/{}/stat".format(self.pid)) as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
            with open("/proc/{}/environ".format(self.pid), "rb") as handle:
                return "RABBITMQ_NODENAME={}".format(self.name).encode() in (
                    handle.read().split(b"\0"))
        except OSError:
            return False


class RabbitCluster:
    """``size`` nodes joined into one cluster. ``start()`` boots them
    (``boot_seconds`` says how long that took); ``close()`` stops them by
    pid and removes their files."""

    def __init__(self, size=3, prefix="rqc", first_port=5691,
                 first_dist_port=25691):
        user = pwd.getpwnam(USER)
        self.uid, self.gid, self.home = user.pw_uid, user.pw_gid, user.pw_dir
        self.base = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
        os.chown(self.base, self.uid, self.gid)
        self.nodes = [Node(self.base, prefix, i, first_port + i - 1,
                           first_dist_port + i - 1) for i in range(1, size + 1)]
        self.boot_seconds = None

    def uri(self, vhost="/", nodes=None):
        """kombu's failover form: every node's URI, ``;``-separated."""
        return ";".join(node.uri(vhost) for node in (nodes or self.nodes))

    def node(self, name):
        return next(node for node in self.nodes if node.name == name)

    # --- life cycle -------------------------------------------------------

    def start(self):
        began = time.monotonic()
        try:
            for node in self.nodes:
                self._write_config(node)
                self._launch(node)
            for node in self.nodes:
                self.await_node(node)
        except BaseException:
            self._pids_from_files()
            raise
        first = self.nodes[0]
        for node in self.nodes[1:]:
            rabbitmqctl("stop_app", node=node.name)
            rabbitmqctl("join_cluster", first.name, node=node.name)
            rabbitmqctl("start_app", node=node.name)
        wait_until(lambda: self.running_nodes(first) == {n.name for n in self.nodes},
                   BOOT_TIMEOUT, "every node running in the cluster", interval=1)
        self.boot_seconds = time.monotonic() - began
        return self

    def _write_config(self, node):
        node.config.write_text(
            "listeners.tcp.1 = 127.0.0.1:{}\n"
            "loopback_users = none\n"
            # the machine is shared: no alarm for a disk with 2 GB free
            "disk_free_limit.absolute = 50MB\n".format(node.port))
        os.chown(node.config, self.uid, self.gid)

    def _launch(self, node):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_CONFIG_FILE": str(node.config),
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.mnesia),
            "RABBITMQ_LOG_BASE": str(node.logs),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.plugins),
        }
        subprocess.run(["runuser", "-u", USER, "--", "env", "-i",
                        *("{}={}".format(k, v) for k, v in env.items()),
                        SERVER, "-detached"],
                       check=True, capture_output=True, timeout=30)

    def await_node(self, node, timeout=BOOT_TIMEOUT):
        """Until the node's app runs (its pid file first); records its pid."""
        rabbitmqctl("wait", "--timeout", str(timeout), str(node.pid_file),
                    node=node.name, timeout=timeout + 30)
        node.pid = int(node.pid_file.read_text().strip())
        node.app_running = True

    def running_nodes(self, via):
        """The names of the running nodes, as ``via`` sees them."""
        done = rabbitmqctl("eval",
                   "io:format(\"~s\", [string:join([atom_to_list(N) || N <- "
                   "rabbit_nodes:all_running()], \",\")]).", node=via.name, check=False)
        text = done.stdout.strip()
        if done.returncode or not text:
            return set()
        # eval prints the value of the expression (ok) after the output
        return set(text.rsplit("ok", 1)[0].strip().split(","))

    def _pids_from_files(self):
        """The pid of every node that got as far as writing its pid file."""
        for node in self.nodes:
            if node.pid is None:
                try:
                    node.pid = int(node.pid_file.read_text().strip())
                except (OSError, ValueError):
                    pass

    def close(self):
        self._pids_from_files()
        for node in self.nodes:
            self._stop(node)
        shutil.rmtree(self.base, ignore_errors=True)

    def _stop(self, node):
        if not node.alive:
            return
        os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while node.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        if node.alive:
            os.kill(node.pid, signal.SIGKILL)

    # --- faults -----------------------------------------------------------

    def kill(self, node):
        """kill -9 the node's VM."""
        os.kill(node.pid, signal.SIGKILL)
        node.app_running = False
        wait_until(lambda: not node.alive, 10, node.name + " gone")

    def restart(self, node):
        """Boot a node killed before; it rejoins the cluster from its data."""
        self._launch(node)
        self.await_node(node)

    def stop_app(self, node):
        node.app_running = False
        rabbitmqctl("stop_app", node=node.name)

    def start_app(self, node):
        rabbitmqctl("start_app", node=node.name)
        node.app_running = True

    def heal(self):
        """Every node up, its app running, and all of them in the cluster."""
        for node in self.nodes:
            if not node.alive:
                self.restart(node)
            elif not node.app_running:
                self.start_app(node)
        wait_until(lambda: self.running_nodes(self.nodes[0]) == {
            n.name for n in self.nodes}, BOOT_TIMEOUT,
            "every node running in the cluster", interval=1)

    # --- what the cluster holds --------------------------------------------

    def add_vhost(self, vhost):
        via = self.any_running()
        rabbitmqctl("add_vhost", vhost, node=via.name)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*",
                    node=via.name)

    def any_running(self):
        return next(node for node in self.nodes
                    if node.alive and node.app_running)

    def queue_info(self, vhost, queue, via=None):
        """{column: value} of ``rabbitmqctl list_queues`` for one queue
        (type, leader, members, messages, consumers), or None."""
        columns = ("name", "type", "leader", "members", "messages", "consumers")
        via = via or self.any_running()
        out = rabbitmqctl("list_queues", "-p", vhost, *columns, "--formatter", "json",
                          node=via.name).stdout
        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                return row
        return None

    def leader(self, vhost, queue):
        """The node that leads a quorum queue."""
        info = self.queue_info(vhost, queue)
        if info is None or not info.get("leader"):
            raise AssertionError("no leader of {} in {}: {}".format(queue, vhost, info))
        return self.node(info["leader"])
