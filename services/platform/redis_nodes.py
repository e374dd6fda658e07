"""One Redis, a Redis Cluster, or the master that Redis Sentinel names,
behind the same calls.

``connect(uri)``: a ``redis+sentinel://`` URI (parse_sentinel_uri) gets
a client of the master the sentinels name, asked again after each
failover (redis-py's ``Sentinel.master_for``); any other URI's server is
asked for ``INFO cluster``: a node of a cluster gets redis-py's
``RedisCluster`` (which finds the other nodes itself), a plain server
``redis.Redis``. Reads then use the client's own pipelines, which route
each command and follow ``MOVED``/``ASK``.

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

How many replicas a write waits for (the durability rule): each master's
replicas in sync (``INFO replication``, looked at once a second and after
every ``WAIT`` that falls short) are known; a write waits for
``min(wanted, in sync)`` of them, so that a master that has lost its
replica (after a failover, until one is back) goes on acking writes that
only it holds, reported as short of replicas once per change (log line,
``on_replicas``). With ``hold``, it waits for ``wanted`` whatever the
master has: writes stop until a replica is back.
"""
import collections
import logging
import re
import time
import urllib.parse

import redis
from nameko.exceptions import ConfigurationError
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

_log = logging.getLogger(__name__)

SINGLE = "single"  # the node name of a plain server
REFRESH_PAUSE = 0.05  # seconds: one slot map read serves the workers that all hit MOVED
REDIRECTS = 3  # MOVED/ASK/NOSCRIPT rounds within one call
REPLICA_LOOK = 1.0  # seconds between two looks at a master's replicas

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_FORM = ("redis+sentinel://[[user]:password@]host[:port][,host[:port]...]"
                 "/service[/db][?sentinel_auth=same]")
# sentinel_auth: whether the sentinels are sent the user and password too
# (no secret of their own in the query: it would show in the logs)
SENTINEL_AUTH = ("none", "same")

SentinelTarget = collections.namedtuple(
    "SentinelTarget", "sentinels service db username password sentinel_auth")
SentinelTarget.__doc__ = """A parsed ``redis+sentinel://`` URI:
``sentinels`` [(host, port)], ``service`` the master's name the sentinels
know, ``db``; ``username``/``password`` those of the master and its
replicas (None: none), and of the sentinels if ``sentinel_auth``."""


def is_sentinel_uri(uri):
    """Whether ``uri``'s scheme names Sentinel (parse_sentinel_uri says
    whether it is a form this code takes)."""
    scheme = str(uri).partition("://")[0].lower()
    return "sentinel" in scheme


def _redacted(uri):
    """``uri`` without the password of its user part."""
    head, sep, rest = str(uri).partition("://")
    userinfo, at, hosts = rest.partition("/")[0].rpartition("@")
    if not at:
        return str(uri)
    user = userinfo.partition(":")[0]
    return "{}{}{}:***@{}".format(head, sep, user, rest[len(userinfo) + 1:])


def _address(text, bad):
    """(host, port) of ``host``, ``host:port`` or ``[v6]:port``."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not host or (rest and not rest.startswith(":")):
            raise bad("{!r} is not an address".format(text))
        port = rest[1:] if rest else None
    else:
        host, colon, port = text.partition(":")
        if not host or ":" in port or (colon and not port):
            raise bad("{!r} is not an address".format(text))
        port = port if colon else None
    if port is None:
        return host, DEFAULT_SENTINEL_PORT
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise bad("the port of {!r} must be an integer from 1 to 65535".format(text))
    return host, int(port)


def parse_sentinel_uri(uri):
    """A SentinelTarget of ``uri``, or ConfigurationError saying what is
    wrong (with the password left out). The form: SENTINEL_FORM; a port
    left out is 26379, a database left out 0."""
    def bad(reason):
        return ConfigurationError("REDIS_URI {}: {}; the form is {}".format(
            _redacted(uri), reason, SENTINEL_FORM))
    try:
        parts = urllib.parse.urlsplit(uri)
    except (TypeError, ValueError) as exc:
        raise bad("not a URI ({})".format(exc)) from None
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise bad("the scheme must be {} (TLS through Sentinel is not "
                  "supported)".format(SENTINEL_SCHEME))
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon and secret else None
    if not hosts:
        raise bad("no sentinel address")
    sentinels = []
    for text in hosts.split(","):
        if not text:
            raise bad("an empty sentinel address in {!r}".format(hosts))
        sentinels.append(_address(text, bad))
    path = parts.path[1:].split("/") if parts.path else [""]
    if len(path) > 2:
        raise bad("the path must be /service or /service/db, not {!r}".format(parts.path))
    service = urllib.parse.unquote(path[0])
    if not service:
        raise bad("no service name: the path must name the master (/mymaster)")
    if re.search(r"[\s\x00-\x1f]", service):
        raise bad("the service name {!r} holds a space or a control "
                  "character".format(service))
    db = path[1] if len(path) == 2 else ""
    if db and not (db.isascii() and db.isdigit()):
        raise bad("the database must be an integer >= 0, not {!r}".format(db))
    if parts.fragment:
        raise bad("a URI of Sentinel has no #fragment")
    options = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key != "sentinel_auth":
            raise bad("unknown option {!r} (known: sentinel_auth)".format(key))
        if key in options:
            raise bad("option {!r} given twice".format(key))
        if value not in SENTINEL_AUTH:
            raise bad("sentinel_auth must be none or same, not {!r}".format(value))
        options[key] = value
    return SentinelTarget(sentinels, service, int(db or 0), username, password,
                          options.get("sentinel_auth") == "same")


class SentinelMaster(redis.Redis):
    """redis-py's client of a Sentinel's master (``Sentinel.master_for``):
    each new connection asks the sentinels where the master is now.
    ``close()`` closes the sentinels' connections too."""

    sentinel = None
    service_name = None

    def close(self):
        try:
            super().close()
        finally:
            if self.sentinel is not None:
                self.sentinel.close()


def sentinel_master(target, **options):
    """A SentinelMaster of ``target`` (a SentinelTarget); ``options`` go to
    the master's connections, their socket_* ones to the sentinels' too."""
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_auth:
        sentinel_options.update(username=target.username, password=target.password)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options)
    client = sentinel.master_for(
        target.service, redis_class=SentinelMaster, db=target.db,
        username=target.username, password=target.password, **options)
    client.sentinel = sentinel
    client.service_name = target.service
    return client


def is_cluster(uri, **options):
    """Whether the server at ``uri`` is a node of a Redis Cluster."""
    probe = redis.Redis.from_url(uri, **options)
    try:
        return bool(int(probe.info("cluster").get("cluster_enabled", 0)))
    finally:
        probe.close()


def connect(uri, **options):
    """A SentinelMaster for a redis+sentinel URI, a RedisCluster for a
    cluster node, else a redis.Redis."""
    if is_sentinel_uri(uri):
        return sentinel_master(parse_sentinel_uri(uri), **options)
    if is_cluster(uri, **{k: v for k, v in options.items() if k != "retry"}):
        options.pop("retry", None)  # RedisCluster retries on its own terms
        return RedisCluster.from_url(uri, **options)
    return redis.Redis.from_url(uri, **options)


def node_clients(client):
    """[(name, redis.Redis)] of every master (or the one server: named
    SINGLE, or by its Sentinel service name)."""
    if isinstance(client, RedisCluster):
        return [(node.name, client.get_redis_connection(node))
                for node in client.get_primaries()]
    return [(getattr(client, "service_name", None) or SINGLE, client)]


def replicas_in_sync(node):
    """(role, replicas in sync) of the server ``node`` (INFO replication;
    a replica still loading its first copy is not in sync)."""
    info = node.info("replication")
    return info.get("role"), sum(
        1 for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict)
        and value.get("state") == "online")


Command = collections.namedtuple("Command", "key args script options")
Command.__new__.__defaults__ = (None, None)
Command.__doc__ = """``args`` sent to the master of ``key``'s slot; with
``script`` (its text), ``args`` start with EVALSHA and its sha, and the
script is loaded on NOSCRIPT. ``options`` go to redis-py's reply parser
(``{"get": True}`` for a SET ... GET)."""

# what is known of a master's replicas: how many were in sync at the last
# look (time.monotonic()), and whether that is fewer than wanted
Replicas = collections.namedtuple("Replicas", "in_sync looked short")


class NotReplicated(redis.ResponseError):
    """WAIT saw fewer replicas than required: the writes may be lost in a
    failover. The message opens with NOREPLICAS, Redis's code for it."""


class WriteRouter:
    """Sends commands to the master of their key's slot, per node in one
    pipeline, with ``WAIT n timeout_ms`` at its end when n > 0: n is
    ``min(wanted, replicas in sync)`` of that master (``wanted`` with
    ``hold``); wanted is ``min_replicas``, or, when it is None, 1 from the
    first time a master is seen with a replica, else 0.

    ``on_redirect(kind)`` is called for each MOVED and ASK followed;
    ``on_replicas(name, short)`` at each look at a master's replicas
    (short: fewer in sync than wanted); ``on_unreplicated(name)`` for each
    node's writes acked with fewer replicas than wanted. Safe to share
    between green threads."""

    def __init__(self, client, min_replicas=0, wait_timeout_ms=1000,
                 on_redirect=None, hold=False, on_replicas=None,
                 on_unreplicated=None):
        self.client = client
        self.on_redirect = on_redirect or (lambda kind: None)
        self.on_replicas = on_replicas or (lambda name, short: None)
        self.on_unreplicated = on_unreplicated or (lambda name: None)
        self.cluster = isinstance(client, RedisCluster)
        self.min_replicas = min_replicas
        self.hold = hold
        self.wait_timeout_ms = wait_timeout_ms
        self.replicas = {}  # node name -> Replicas
        self._seen_replica = False
        self._refreshed = 0.0
        self._last_redirect = None  # what made a command be resent, lately

    @property
    def wanted(self):
        """Replicas each master's writes should be on before they are acked."""
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self._seen_replica else 0

    def _node(self, key):
        if not self.cluster:
            return node_clients(self.client)[0]
        node = self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key))
        return node.name, self.client.get_redis_connection(node)

    def refresh(self):
        """Read the slot map again (at most once per REFRESH_PAUSE)."""
        if not self.cluster or time.monotonic() - self._refreshed < REFRESH_PAUSE:
            return
        self._refreshed = time.monotonic()
        self.client.nodes_manager.initialize()

    def _look(self, name, node, again=False):
        """The replicas in sync of the master ``name``, looked at if the
        last look is older than REPLICA_LOOK (or ``again``); a change of
        its state is logged once. Raises the RedisError of the look."""
        known = self.replicas.get(name)
        now = time.monotonic()
        if known is not None and not again and now - known.looked < REPLICA_LOOK:
            return known.in_sync
        if known is not None:  # the next look in a second, even if this one fails
            self.replicas[name] = known._replace(looked=now)
        role, in_sync = replicas_in_sync(node)
        known = self.replicas.get(name)  # another green thread may have looked
        if role != "master":  # demoted: its writes are refused anyway
            return 0 if known is None else known.in_sync
        self._seen_replica = self._seen_replica or in_sync > 0
        wanted = self.wanted
        short = in_sync < wanted
        self.replicas[name] = Replicas(in_sync, now, short)
        self.on_replicas(name, short)
        if short and (known is None or not known.short):
            _log.warning(
                "Redis master %s has %d replica(s) in sync, %d wanted: %s until "
                "one is back", name, in_sync, wanted,
                "its writes wait" if self.hold else
                "its writes are acked without them (reduced durability)")
        elif not short and known is not None and known.short:
            _log.warning("Redis master %s has %d replica(s) in sync again: its "
                         "writes wait for %d", name, in_sync, wanted)
        return in_sync

    def _required(self, name, node, again=False):
        """How many replicas the writes to ``name`` must be on (WAIT)."""
        if self.min_replicas == 0:
            return 0
        in_sync = self._look(name, node, again)
        return self.wanted if self.hold else min(self.wanted, in_sync)

    def durability(self):
        """(wanted, {name: replicas in sync} of the masters short of them),
        each master looked at if due (one that does not answer keeps what
        was known of it)."""
        if self.min_replicas == 0:
            return 0, {}
        masters = node_clients(self.client)
        for name, node in masters:
            try:
                self._look(name, node)
            except redis.RedisError:
                pass
        names = {name for name, _ in masters}
        return self.wanted, {name: known.in_sync for name, known in self.replicas.items()
                             if known.short and name in names}

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
            for name, (node, indexes) in groups.items():
                pending += self._send(name, node, commands, indexes, replies, errors)
            if not pending:
                break
        else:  # still redirected: the last redirect is the error
            errors.append(self._last_redirect)
        if errors:
            raise errors[0]
        return replies

    def _send(self, name, node, commands, indexes, replies, errors, asking=False):
        """Send, record replies and errors; return the indexes to resend."""
        try:
            wait = self._required(name, node)
            if len(indexes) == 1 and not (asking or wait):
                # one command, nothing after it: no pipeline needed
                command = commands[indexes[0]]
                try:
                    got = [node.execute_command(*command.args, **(command.options or {}))]
                except redis.ResponseError as exc:  # a reply: MOVED, NOSCRIPT, ...
                    got = [exc]
            else:
                got = self._pipeline(node, commands, indexes, asking, wait)
        except redis.RedisError as exc:
            if isinstance(exc, redis.ConnectionError):
                self.refresh()
            errors.append(exc)
            return []
        resend = self._replies(node, commands, indexes, replies, errors, got, asking)
        if all(isinstance(reply, Exception) for reply in got[:len(indexes)]):
            return resend  # nothing written here to wait for
        acked = got[len(indexes)] if wait else 0
        if isinstance(acked, Exception):
            errors.append(acked)
        elif acked < wait:
            # the replica may be gone: what the master has now decides
            try:
                need = self._required(name, node, again=True)
            except redis.RedisError as exc:
                errors.append(exc)
                return resend
            if acked < need:
                errors.append(NotReplicated(
                    "NOREPLICAS WAIT saw {} of {} replicas in {} ms".format(
                        acked, need, self.wait_timeout_ms)))
            else:
                self.on_unreplicated(name)
        elif acked < self.wanted:
            self.on_unreplicated(name)
        return resend

    def _pipeline(self, node, commands, indexes, asking, wait):
        """The replies of the commands (and of ``WAIT wait``, if > 0) sent
        in one pipeline; after ASKING, only the commands' own replies."""
        with node.pipeline(transaction=False) as pipe:
            for index in indexes:
                if asking:
                    pipe.execute_command("ASKING")
                pipe.execute_command(*commands[index].args,
                                     **(commands[index].options or {}))
            if wait:
                pipe.execute_command("WAIT", wait, self.wait_timeout_ms)
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
                    resend += self._send(target.name,
                                         self.client.get_redis_connection(target),
                                         commands, [index], replies, errors,
                                         asking=True)
            elif isinstance(reply, Exception):
                errors.append(reply)
            else:
                replies[index] = reply
        return resend
