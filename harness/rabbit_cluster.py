"""A RabbitMQ cluster of extra nodes on this machine, beside the one on 5672.

Each node is a harness.rabbit_node.RabbitNode: node name
``<prefix><i>@localhost``, AMQP port ``first_port + i - 1`` and distribution
port ``first_dist_port + i - 1`` on 127.0.0.1 (free ports when not given),
its files under one temporary folder. They run as the ``rabbitmq`` user, so
they share its Erlang cookie, and rabbitmqctl (which runs as that user too)
reaches them by ``-n``. Nodes 2..n join node 1 with ``rabbitmqctl
join_cluster``. Everything is stopped by pid; the node on 5672 is never
named, so never touched.

No pytest here: the bench uses it too.
"""
import itertools
import json
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

from harness.process import wait_until
from harness.rabbit_node import BOOT_TIMEOUT, USER, RabbitNode


class RabbitCluster:
    """``size`` nodes joined into one cluster. ``start()`` boots them
    (``boot_seconds`` says how long that took); ``close()`` stops them by
    pid and removes their files."""

    def __init__(self, size=3, prefix="rqc", first_port=None,
                 first_dist_port=None):
        self.base = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
        user = pwd.getpwnam(USER)
        os.chown(self.base, user.pw_uid, user.pw_gid)
        self.nodes = [
            RabbitNode("{}{}".format(prefix, i),
                       first_port and first_port + i - 1,
                       first_dist_port and first_dist_port + i - 1, base=self.base)
            for i in range(1, size + 1)]
        self.prefix = prefix
        self.serial = itertools.count(size + 1)  # names of nodes added later
        self.boot_seconds = None

    def uri(self, vhost="", nodes=None):
        """kombu's failover form: every node's URI, ``;``-separated."""
        return ";".join(node.uri(vhost) for node in (nodes or self.nodes))

    def node(self, name):
        return next(node for node in self.nodes if node.name == name)

    # --- life cycle -------------------------------------------------------

    def start(self):
        began = time.monotonic()
        for node in self.nodes:  # the VMs boot side by side
            node.launch()
        for node in self.nodes:
            node.await_boot()
        for node in self.nodes[1:]:
            node.join(self.nodes[0])
        self.await_all_running()
        self.boot_seconds = time.monotonic() - began
        return self

    def await_all_running(self):
        wait_until(lambda: self.running_nodes(self.nodes[0]) == {
            n.name for n in self.nodes}, BOOT_TIMEOUT,
            "every node running in the cluster", interval=1)

    def running_nodes(self, via):
        """The names of the running nodes, as ``via`` sees them."""
        done = via.ctl("eval",
                       "io:format(\"~s\", [string:join([atom_to_list(N) || N <- "
                       "rabbit_nodes:all_running()], \",\")]).", check=False)
        text = done.stdout.strip()
        if done.returncode or not text:
            return set()
        # eval prints the value of the expression (ok) after the output
        return set(text.rsplit("ok", 1)[0].strip().split(","))

    def close(self):
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- faults -----------------------------------------------------------

    def heal(self):
        """Every node up, its app running, and all of them in the cluster
        (a node killed comes back from its data)."""
        for node in self.nodes:
            if not node.alive:
                node.launch()
                node.await_boot()
            elif not node.app_running:
                node.start_app()
        self.await_all_running()

    # --- a node lost for good, and its replacement ------------------------

    def forget(self, lost):
        """``rabbitmqctl forget_cluster_node`` of a node that is down, from
        a running one (it also drops the lost node from every quorum
        queue's members); then the lost node's files go, so it can never
        come back, and it leaves ``nodes``."""
        if lost.alive:
            raise AssertionError(lost.name + " is running: stop it first")
        self.any_running().ctl("forget_cluster_node", lost.name)
        lost.stop()
        self.nodes.remove(lost)

    def add_node(self):
        """A new node (next name, free ports) booted and joined to the
        cluster; it holds no queue replica until ``grow()``."""
        node = RabbitNode("{}{}".format(self.prefix, next(self.serial)),
                          base=self.base)
        via = self.any_running()
        self.nodes.append(node)  # stopped by close() whatever happens next
        node.start()
        node.join(via)
        self.await_all_running()
        return node

    def grow(self, node):
        """``rabbitmq-queues grow <node> all``: a member on ``node`` for
        every quorum queue of every vhost that has none there. The output
        (a line per queue)."""
        return self.any_running().queues("grow", node.name, "all").stdout

    # --- what the cluster holds --------------------------------------------

    def add_vhost(self, vhost):
        via = self.any_running()
        via.ctl("add_vhost", vhost)
        via.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def any_running(self):
        return next(node for node in self.nodes
                    if node.alive and node.app_running)

    def queue_info(self, vhost, queue, via=None):
        """{column: value} of ``rabbitmqctl list_queues`` for one queue
        (type, leader, members, messages, consumers), or None."""
        columns = ("name", "type", "leader", "members", "messages", "consumers")
        via = via or self.any_running()
        out = via.ctl("list_queues", "-p", vhost, *columns, "--formatter",
                      "json").stdout
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
