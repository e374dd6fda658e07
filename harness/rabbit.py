"""RabbitMQ: vhosts of our own, and what a queue holds.

Every ``rabbitmqctl`` call starts an Erlang VM (about 0.8 s), so vhosts are
made and deleted in batches, with one ``rabbitmqctl eval`` each."""
import itertools
import re
import subprocess
import time
import uuid

from kombu import Connection


class RabbitmqctlError(RuntimeError):
    pass


def rabbitmqctl(*args, check=True, timeout=60, node=None):
    """The finished run; RabbitmqctlError (with its stderr) if it failed
    and ``check``. ``node``: another node than the machine's."""
    if node is not None:
        args = ("-n", node) + args
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode:
        raise RabbitmqctlError("rabbitmqctl {} failed: {}".format(
            " ".join(args[:2]), done.stderr.strip()))
    return done


def amqp_uri(host, vhost):
    return "amqp://guest:guest@{}/{}".format(host, vhost)


def _erlang_list(names):
    return "[{}]".format(", ".join('<<"{}">>'.format(name) for name in names))


def add_vhosts(names, node=None):
    """Make the vhosts, all permissions for guest."""
    rabbitmqctl("eval", (
        "[begin ok = rabbit_vhost:add(V, <<\"guest\">>), "
        "ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, "
        "<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"guest\">>) end "
        "|| V <- {}], ok.").format(_erlang_list(names)), node=node)


def delete_vhosts(names, patience=10, node=None):
    """Delete the vhosts, trying again for up to ``patience`` s (a broker
    being restarted refuses for a while). None, or what went wrong."""
    deadline = time.monotonic() + patience
    while True:
        done = rabbitmqctl("eval", "[rabbit_vhost:delete(V, <<\"guest\">>) || V <- {}], ok."
                           .format(_erlang_list(names)), check=False, node=node)
        if done.returncode == 0:
            return None
        if time.monotonic() > deadline:
            return "deleting vhosts {}: {}\n  remove them with: rabbitmqctl delete_vhost".format(
                " ".join(names), (done.stderr.strip() or "?").splitlines()[0])
        time.sleep(1)


class VhostPool:
    """A fresh vhost for each taker, made and deleted in batches: one
    ``eval`` per ``batch`` vhosts instead of three rabbitmqctl runs each.
    Few vhosts live at once: RabbitMQ starts each one's message stores when
    its app starts, and with hundreds a fault test's start_app takes
    minutes."""

    STALE = 3600  # seconds: a vhost this old was left by a run that died

    def __init__(self, prefix="test", batch=10, node=None):
        # the creation time in the name tells stale vhosts apart
        self.prefix = "{}-{}-{}".format(prefix, int(time.time()), uuid.uuid4().hex[:6])
        self.batch = batch
        self.node = node
        self.serial = itertools.count()
        self.free = []
        self.used = []

    def take(self):
        if not self.free:
            names = ["{}-{}".format(self.prefix, next(self.serial))
                     for _ in range(self.batch)]
            try:
                add_vhosts(names, node=self.node)
            except BaseException:  # some may exist: deleted at the end
                self.used += names
                raise
            self.free = names[::-1]
        vhost = self.free.pop()
        self.used.append(vhost)
        return vhost

    def release(self, vhost):
        """Done with: deleted with the next batch (or at the end)."""
        if len(self.used) >= self.batch:
            self.delete(self.used, node=self.node)

    @staticmethod
    def delete(names, patience=10, node=None):
        """Delete the vhosts named, and empty the list. None, or what went
        wrong."""
        doomed = list(names)
        names.clear()
        return delete_vhosts(doomed, patience, node) if doomed else None

    @classmethod
    def delete_stale(cls, prefix="test"):
        """Vhosts of runs that died before their clean-up."""
        listed = rabbitmqctl("list_vhosts", "--no-table-headers", check=False).stdout
        pattern = r"{0}-(\d+)-[0-9a-f]+-\d+|{0}-[0-9a-f]{{12}}|{0}-[0-9a-f]{{8}}-\d+".format(
            re.escape(prefix))
        now = time.time()
        stale = []
        for name in listed.split():
            match = re.fullmatch(pattern, name)
            if match and (match.group(1) is None or now - int(match.group(1)) > cls.STALE):
                stale.append(name)
        cls.delete(stale)

    def close(self, patience=10):
        """None, or what went wrong."""
        return self.delete(self.used + self.free, patience, self.node)


def queue_state(uri, name):
    """(ready messages, consumers); (0, 0) when it does not exist yet, or
    the broker is away."""
    try:
        with Connection(uri, connect_timeout=2) as connection:
            _, ready, consumers = connection.default_channel.queue_declare(
                name, passive=True)
        return ready, consumers
    except Exception:
        return 0, 0


def queue_messages(vhost, name, node=None):
    """Ready plus unacknowledged messages, which AMQP cannot tell."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages",
                      "--no-table-headers", node=node).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[1])
    return 0


def broker_answers(uri):
    try:
        with Connection(uri, connect_timeout=2) as connection:
            connection.connect()
        return True
    except Exception:
        return False


def broker_version(uri):
    with Connection(uri, connect_timeout=5) as connection:
        connection.connect()
        version = connection.connection.server_properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else version
