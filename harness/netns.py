"""A node on a network link of its own, which a test can cut off.

A network namespace joined to the machine's by a veth pair: a server
started inside it is reached on the inner address only, through the pair.
``partition()`` takes the inner end down: the outer end stays up with its
route, so packets to the node are dropped in silence (clients time out, as
across a real partition, rather than being refused), and the node's own
replies go nowhere. ``heal()`` brings it up again. Nothing else of the
machine is touched: the loopback the other test runs share stays as it is.

Needs root and ``ip`` (iproute2). No pytest here.
"""
import itertools
import os
import subprocess

SUBNET = "10.213"  # /30 links taken from 10.213.0.0/16
_serial = itertools.count()


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True,
                          text=True, timeout=30)


def _free_link():
    """(outer, inner) addresses of a /30 no interface of the machine has."""
    used = ip("-o", "-4", "addr", "show").stdout
    start = (os.getpid() * 8 + next(_serial)) % 16384
    for step in range(16384):
        index = (start + step) % 16384
        prefix = "{}.{}.".format(SUBNET, index // 64)
        outer = prefix + str(index % 64 * 4 + 1)
        if " {}/".format(outer) not in used:
            return outer, prefix + str(index % 64 * 4 + 2)
    raise RuntimeError("no free /30 in {}.0.0/16".format(SUBNET))


class NetNamespace:
    """Made by ``create()``, removed by ``destroy()`` (stop the processes
    run inside it first). ``address``: the inner one, for servers to bind."""

    def __init__(self):
        tag = "{}{}".format(os.getpid() % 100000, next(_serial))
        self.name = "vote-part-" + tag
        self.outer = "vpo" + tag  # interface names: 15 characters at most
        self.inner = "vpi" + tag
        self.outer_address = self.address = None
        self.cut = False

    def create(self):
        self.outer_address, self.address = _free_link()
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner,
               "netns", self.name)
            ip("addr", "add", self.outer_address + "/30", "dev", self.outer)
            ip("link", "set", self.outer, "up")
            ip("-n", self.name, "addr", "add", self.address + "/30", "dev", self.inner)
            ip("-n", self.name, "link", "set", self.inner, "up")
            ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def command(self, argv):
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def partition(self):
        ip("-n", self.name, "link", "set", self.inner, "down")
        self.cut = True

    def heal(self):
        ip("-n", self.name, "link", "set", self.inner, "up")
        self.cut = False

    def destroy(self):
        # the pair goes with its outer end; the namespace outlives its name
        # while a process runs in it, so the pair is not left to it
        ip("link", "del", self.outer, check=False)
        ip("netns", "del", self.name, check=False)
