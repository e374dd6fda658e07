"""One Redis or a Redis Cluster behind the same calls.

``connect(uri)`` asks the server at ``uri`` for ``INFO cluster``: a node
of a cluster gets redis-py's ``RedisCluster`` (which finds the other nodes
itself), a plain server ``redis.Redis``. Reads then use the client's own
pipelines, which route each command and follow ``MOVED``/``ASK``.

Writes that must survive a failover go through ``WriteRouter``, because
redis-py cannot do what they need:

* ``WAIT`` counts the replicas that have the writes *of the connection it
  is sent on*. ``RedisCluster`` sends each command on whichever pooled
  connection is free, and sends a key-less ``WAIT`` to a random node, so
  it proves nothing. Here each node's commands and the ``WAIT`` after them
  go in one pipeline, on one connection.
* Its pipelines load every script with ``SCRIPT EXISTS`` before each
  execute (one more round trip); here ``EVALSHA`` is sent, and the script
  loaded only on ``NOSCRIPT``.

Every command given to the router must be safe to send twice (the votes
service's scripts are, through their exactly-once marks): on ``MOVED``
the slot map is read again and the command resent, on ``ASK`` it is resent
to the node named, after ``ASKING``.
"""
import collections
import time

import redis
from redis.cluster import RedisCluster

SINGLE = "single"  # the node name of a plain server
REFRESH_PAUSE = 0.05  # seconds: one slot map read serves the workers that all hit MOVED
REDIRECTS = 3  # MOVED/ASK/NOSCRIPT rounds within one call


def is_cluster(uri, **options):
    """Whether the server at ``uri`` is a node of a Redis Cluster."""
    probe = redis.Redis.from_url(uri, **options)
    try:
        return bool(int(probe.info("cluster").get("cluster_enabled", 0)))
    finally:
        probe.close()


def connect(uri, **options):
    """A RedisCluster for a cluster node, else a redis.Redis."""
    if is_cluster(uri, **{k: v for k, v in options.items() if k != "retry"}):
        options.pop("retry", None)  # RedisCluster retries on its own terms
        return RedisCluster.from_url(uri, **options)
    return redis.Redis.from_url(uri, **options)


def replica_count(client):
    """How many replicas are connected, to the master with the fewest (or
    to the one server)."""
    return min(int(node.info("replication").get("connected_slaves", 0))
               for _, node in node_clients(client))


def node_clients(client):
    """[(name, redis.Redis)] of every master (or the one server)."""
    if isinstance(client, RedisCluster):
        return [(node.name, client.get_redis_connection(node))
                for node in client.get_primaries()]
    return [(SINGLE, client)]


Command = collections.namedtuple("Command", "key args script options")
Command.__new__.__defaults__ = (None, None)
Command.__doc__ = """``args`` sent to the master of ``key``'s slot; with
``script`` (its text), ``args`` start with EVALSHA and its sha, and the
script is loaded on NOSCRIPT. ``options`` go to redis-py's reply parser
(``{"get": True}`` for a SET ... GET)."""


class NotReplicated(redis.ResponseError):
    """WAIT saw fewer replicas than required: the writes may be lost in a
    failover. The message opens with NOREPLICAS, Redis's code for it."""


class WriteRouter:
    """Sends commands to the master of their key's slot, per node in one
    pipeline, with ``WAIT min_replicas timeout_ms`` at its end when
    ``min_replicas`` > 0. ``on_redirect(kind)`` is called for each MOVED
    and ASK followed. Safe to share between green threads."""

    def __init__(self, client, min_replicas=0, wait_timeout_ms=1000,
                 on_redirect=None):
        self.client = client
        self.on_redirect = on_redirect or (lambda kind: None)
        self.cluster = isinstance(client, RedisCluster)
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._refreshed = 0.0
        self._last_redirect = None  # what made a command be resent, lately

    def _node(self, key):
        if not self.cluster:
            return SINGLE, self.client
        node = self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key))
        return node.name, self.client.get_redis_connection(node)

    def refresh(self):
        """Read the slot map again (at most once per REFRESH_PAUSE)."""
        if not self.cluster or time.monotonic() - self._refreshed < REFRESH_PAUSE:
            return
        self._refreshed = time.monotonic()
        self.client.nodes_manager.initialize()

    def run(self, commands):
        """The replies, in order; raises the first error (a RedisError) if
        any command failed or was not replicated, once every node has had
        its commands (what succeeded stays done)."""
        replies = [None] * len(commands)
        pending = list(range(len(commands)))
        errors = []
        for _ in range(REDIRECTS):
            groups = collections.OrderedDict()
            try:
                for index in pending:
                    name, node = self._node(commands[index].key)
                    groups.setdefault(name, (node, []))[1].append(index)
            except redis.RedisError as exc:  # a slot nobody serves now
                self.refresh()
                raise exc
            pending = []
            for node, indexes in groups.values():
                pending += self._send(node, commands, indexes, replies, errors)
            if not pending:
                break
        else:  # still redirected: the last redirect is the error
            errors.append(self._last_redirect)
        if errors:
            raise errors[0]
        return replies

    def _send(self, node, commands, indexes, replies, errors, asking=False):
        """Send, record replies and errors; return the indexes to resend."""
        try:
            if len(indexes) == 1 and not (asking or self.min_replicas):
                # one command, nothing after it: no pipeline needed
                command = commands[indexes[0]]
                try:
                    got = [node.execute_command(*command.args, **(command.options or {}))]
                except redis.ResponseError as exc:  # a reply: MOVED, NOSCRIPT, ...
                    got = [exc]
            else:
                got = self._pipeline(node, commands, indexes, asking)
        except redis.RedisError as exc:
            if isinstance(exc, redis.ConnectionError):
                self.refresh()
            errors.append(exc)
            return []
        resend = self._replies(node, commands, indexes, replies, errors, got, asking)
        if self.min_replicas:
            acked = got[len(indexes)]
            if isinstance(acked, Exception):
                errors.append(acked)
            elif acked < self.min_replicas:
                errors.append(NotReplicated(
                    "NOREPLICAS WAIT saw {} of {} replicas in {} ms".format(
                        acked, self.min_replicas, self.wait_timeout_ms)))
        return resend

    def _pipeline(self, node, commands, indexes, asking):
        """The replies of the commands (and of WAIT) sent in one pipeline;
        after ASKING, only the commands' own replies."""
        with node.pipeline(transaction=False) as pipe:
            for index in indexes:
                if asking:
                    pipe.execute_command("ASKING")
                pipe.execute_command(*commands[index].args,
                                     **(commands[index].options or {}))
            if self.min_replicas:
                pipe.execute_command("WAIT", self.min_replicas, self.wait_timeout_ms)
            got = pipe.execute(raise_on_error=False)
        if asking:
            got = [got[i] for i in range(len(got)) if i % 2 or i == 2 * len(indexes)]
        return got

    def _replies(self, node, commands, indexes, replies, errors, got, asking):
        """Record replies and errors; return the indexes to resend."""
        resend = []
        for index, reply in zip(indexes, got, strict=False):  # WAIT last
            command = commands[index]
            if isinstance(reply, redis.exceptions.NoScriptError) and command.script:
                self._last_redirect = reply
                node.script_load(command.script)
                resend.append(index)
            elif isinstance(reply, redis.exceptions.MovedError):  # before AskError, its base
                self._last_redirect = reply
                self.on_redirect("MOVED")
                self.refresh()
                resend.append(index)
            elif isinstance(reply, redis.exceptions.AskError):
                self._last_redirect = reply
                self.on_redirect("ASK")
                target = self.client.nodes_manager.get_node(reply.host, reply.port) \
                    if self.cluster and not asking else None
                if target is None:
                    self.refresh()
                    resend.append(index)
                else:
                    resend += self._send(self.client.get_redis_connection(target),
                                         commands, [index], replies, errors,
                                         asking=True)
            elif isinstance(reply, Exception):
                errors.append(reply)
            else:
                replies[index] = reply
        return resend
