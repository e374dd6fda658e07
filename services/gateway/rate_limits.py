"""Rate limits on votes, per client address and per voter (README,
"Securing it").

Off unless RATE_LIMIT_PER_ADDRESS or RATE_LIMIT_PER_VOTER is set
(``60/minute``: a count, then ``second``, ``minute``, ``hour`` or ``day``,
optionally with a number: ``100/10 seconds``). Each vote counts one, so a
batch of 20 takes 20. The counts are in Redis (REDIS_URI), so every gateway
process shares them: one key per limit and identity, a window that starts
at its first vote and ends ``period`` later (the key's expiry). A request
over any of its limits is refused whole and takes nothing from them.

The client address is the socket's peer, or, when that peer is one of
TRUSTED_PROXIES, the nearest address in ``X-Forwarded-For`` that is not a
trusted proxy. IPv6 clients are counted per /64, the block one host gets.

A request's cost is bounded: with RATE_LIMIT_PER_VOTER set, one request
may name at most RATE_LIMIT_MAX_VOTERS different voters (past that it is
refused with 400 before any check), and one Redis call carries at most
MAX_GROUP_KEYS limits. The limits of a request are checked in order,
address first, and the check stops at the first that refuses it; a limit
that refused is remembered here until its window ends, so that a client
known to be over it is refused again without asking Redis.

Only a Redis outage lets votes through (fail-open): a limit is a brake, not
the guard of the counts. A connection refused or dropped is an outage; a
call that is merely slow (a timeout, or a check queued behind others for
longer than WAIT_TIMEOUT) is one only if Redis then does not answer a PING
within SOCKET_TIMEOUT. Otherwise that request alone is refused with 503 and
Retry-After, and the limit holds for everyone else. Each failure is
counted in ``gateway_rate_limit_errors_total`` and logged at most every
10 s; for a second after an outage, Redis is not asked, so an unreachable
Redis costs no vote a timeout.

Reads (GET /vote-counts and GET /posts/top) have a limit per client
address of their own, RATE_LIMIT_READS_PER_ADDRESS (same form; on by
default, 0 turns it off), counted in each gateway process's memory: a read
costs no Redis call, and a client gets at most that many reads from each
process. A page of /posts/top counts one read per TOP_POSTS_PER_READ posts
asked for.

Not the ``limits`` library: its fixed window counts refused hits too, its
Redis storages build their own client from a URI (``redis+cluster://``
for a cluster, where REDIS_URI names any node), and the headers of a 429
would cost a second round trip per limit; here one script call answers
the checks of many concurrent requests.
"""
import functools
import ipaddress
import json
import logging
import time
from pathlib import Path

import redis
from eventlet.event import Event
from nameko.extensions import DependencyProvider
from redis.cluster import RedisCluster

from services import contracts
from services.gateway import metrics
from services.gateway.exceptions import RateLimited, RateLimitsUnavailable
from services.gateway.exceptions import ValidationError as InvalidRequest
from services.platform import redis_nodes
from services.platform.batching import GroupCommit
from services.platform.proxies import client_address
from services.platform.proxies import parse_ip as _address
from services.settings import Settings, settings_of
from services.settings.kinds import Rate, parse_rate  # noqa: F401 (tests)
from services.settings.table import GATEWAY

_log = logging.getLogger(__name__)

DEFAULT_MAX_VOTERS = 100
SOCKET_TIMEOUT = 0.5  # seconds: a Redis that hangs costs a vote this at most
WAIT_TIMEOUT = 1.0    # seconds a check may wait for its answer
ANSWERED_FOR = 1.0    # seconds a PING that was answered stands for
PAUSE_AFTER_ERROR = 1.0  # seconds Redis is not asked after an outage
LOG_INTERVAL = 10.0
MAX_GROUP_KEYS = 4000  # limits (keys) per Redis call: its time stays short
MAX_KNOWN = 10_000     # identities whose refusals this process keeps
TOP_POSTS_PER_READ = 10  # /posts/top?limit=100 counts 10 reads
MAX_READ_CLIENTS = 100_000  # read windows kept; the oldest goes first
READ_CHARGED_ENVIRON_KEY = "gateway.read_charged"
ADDRESS_CACHE = 4096  # parsed client addresses kept
# An accepted check of an identity that has voted before in the window
# also takes a lease on each such limit: up to LEASE_SHARE of what is left
# of it, at most MAX_LEASE votes, counted in Redis at once and spent by
# this process without asking Redis again until the window ends. The total
# never exceeds a limit; a lease left unspent refuses its identity that many
# votes early. No lease is taken when fewer than 100 votes would be left
# (1% of that is under one vote), so limits of 100 or less are exact; nor
# on an identity's first vote, so that one-time voters (most of a forum's)
# strand no allowance and cost no bookkeeping.
LEASE_SHARE = 0.01
MAX_LEASE = 50
MAX_LEASES = 10_000  # identities whose leases this process keeps

# the check of every limit of a batch of requests, in one call (its
# arguments: the script's header)
CHECK_SCRIPT = (Path(__file__).parent / "scripts" / "rate_limits.lua").read_text()


def parse_reads(text):
    """RATE_LIMIT_READS_PER_ADDRESS: its default when unset or empty, None
    (off) for 0."""
    return Settings({"RATE_LIMIT_READS_PER_ADDRESS": text}, GATEWAY).rate_limit_reads_per_address


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def address_identity(address):
    """IPv6 addresses by their /64, the block one host gets."""
    parsed = _address(address)
    if parsed is not None and parsed.version == 6 and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network((parsed, 64), strict=False))
    return address


class RateLimits:
    """Checks each vote request against the configured limits, and each
    read against the read limit; raises RateLimited over one."""

    def __init__(self, per_address, per_voter, trusted, submit,
                 max_voters=DEFAULT_MAX_VOTERS, reads=None):
        self.per_address, self.per_voter = per_address, per_voter
        self.trusted = trusted
        self.submit = submit  # submit(check) -> (position, used, ttl_ms)
        self.max_voters = max_voters
        self.reads = None if reads is None else ReadWindows(reads)

    @property
    def votes_limited(self):
        """A limit on votes (held in Redis) is set."""
        return self.per_address is not None or self.per_voter is not None

    @property
    def enabled(self):
        return self.votes_limited or self.reads is not None

    def check(self, environ, votes):
        limits = []  # (Rate, identity, cost)
        if self.per_voter is not None:
            voters = {}
            for vote in votes:
                if vote.voterId is not None:
                    voters[vote.voterId] = voters.get(vote.voterId, 0) + 1
            if len(voters) > self.max_voters:
                raise InvalidRequest(
                    "votes: name at most {} different voterIds in one request".format(
                        self.max_voters))
            limits = [(self.per_voter, voter, cost) for voter, cost in voters.items()]
        if self.per_address is not None:
            limits.insert(0, (self.per_address, address_identity(
                client_address(environ, self.trusted)), len(votes)))
        if not limits:
            return
        position, used, ttl_ms = self.submit(limits)
        if position:
            rate = limits[position - 1][0]
            raise RateLimited(rate, used, ttl_ms)

    def read(self, environ, cost=1):
        """Count a read of ``cost`` against its client's read limit, once
        per request (a read the inline path left to a worker is not
        counted twice)."""
        if self.reads is None or environ.get(READ_CHARGED_ENVIRON_KEY):
            return
        environ[READ_CHARGED_ENVIRON_KEY] = True
        self.reads.take(address_identity(client_address(environ, self.trusted)), cost)


class ReadWindows:
    """A fixed window per client, in memory: ``rate.limit`` reads per
    ``rate.seconds``, from the client's first read. At most ``most``
    windows are kept, in the order they began, so the oldest (the first to
    end) goes first."""

    def __init__(self, rate, clock=time.monotonic, most=MAX_READ_CLIENTS):
        self.rate = rate
        self.clock = clock
        self.most = most
        self.windows = {}  # identity -> [reads, monotonic end]

    def take(self, identity, cost):
        now = self.clock()
        window = self.windows.get(identity)
        if window is None or window[1] <= now:
            self.windows.pop(identity, None)
            while self.windows and (len(self.windows) >= self.most
                                    or next(iter(self.windows.values()))[1] <= now):
                del self.windows[next(iter(self.windows))]
            window = self.windows[identity] = [0, now + self.rate.seconds]
        if window[0] + cost > self.rate.limit:
            raise RateLimited(self.rate, window[0], (window[1] - now) * 1000)
        window[0] += cost


def top_read_cost(limit):
    """What a page of ``limit`` posts of /posts/top counts."""
    return -(-limit // TOP_POSTS_PER_READ)


def _key(rate, identity):
    return contracts.rate_key(rate.name, rate.seconds, identity)


class RateLimiter(DependencyProvider):
    """Injects the configured RateLimits (its checks do nothing when no
    limit is set).

    On one Redis, the checks of concurrent requests go in one script call
    (services.platform.batching), each all-or-nothing. On a Redis Cluster,
    each limit is its own call (one key, one slot), address first: a
    request that a voter limit refuses has then used its address's
    allowance."""

    def setup(self):
        settings = settings_of(self.container)
        self.client = None
        self.group = None
        self.limits = RateLimits(
            settings.rate_limit_per_address, settings.rate_limit_per_voter,
            settings.trusted_proxies, self._submit, settings.rate_limit_max_voters,
            settings.rate_limit_reads_per_address)
        if not self.limits.votes_limited:
            return
        self.uri = settings.redis_uri
        self.paused_until = 0.0
        self.answered_until = 0.0  # a PING was answered: Redis is up
        self.probing = None  # the Event of the PING in flight
        self.logged_at = 0.0
        self.leases = {}  # key -> [votes left, monotonic end of its window]
        self.refused = {}  # key -> [count when it refused, monotonic end of its window]
        self.group = GroupCommit(self._flush, max_weight=MAX_GROUP_KEYS, weigh=len,
                                 max_wait=WAIT_TIMEOUT, deadline=WAIT_TIMEOUT)

    def start(self):
        if self.group is not None:
            self.container.spawn_managed_thread(self.group.run)

    def stop(self):
        if self.client is not None:
            self.client.close()
            self.client = None

    kill = stop

    def get_dependency(self, worker_ctx):
        return self.limits

    def _connect(self):
        if self.client is None:
            client = redis_nodes.connect(
                self.uri, socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT)
            self.script = client.register_script(CHECK_SCRIPT)
            self.cluster = isinstance(client, RedisCluster)
            self.client = client
        return self.client

    def _submit(self, limits):
        """(position, used, ttl_ms) of the check; (0, 0, 0), and the error
        counted and logged, when Redis is out. A check that this process's
        leases cover takes from them and asks nothing; one that a limit
        known to be spent refuses is refused without asking."""
        now = time.monotonic()
        check = [(_key(rate, identity), rate, cost) for rate, identity, cost in limits]
        leases = [self.leases.get(key) for key, _, _ in check]
        if all(lease is not None and lease[1] > now and lease[0] >= cost
               for lease, (_, _, cost) in zip(leases, check, strict=True)):
            for lease, (_, _, cost) in zip(leases, check, strict=True):
                lease[0] -= cost
            return 0, 0, 0
        for position, (key, rate, cost) in enumerate(check, 1):
            known = self.refused.get(key)
            # the count only grows until its window ends
            if known is not None and known[1] > now and known[0] + cost > rate.limit:
                return position, known[0], (known[1] - now) * 1000
        if now < self.paused_until:
            metrics.rate_limit_errors.inc()
            return 0, 0, 0
        try:
            return self.group.submit(check)
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc):
        """(0, 0, 0) for a Redis that is out; raises RateLimitsUnavailable
        for one that is up but did not answer this check in time."""
        metrics.rate_limit_errors.inc()
        outage = self._outage(exc)
        now = time.monotonic()
        if outage:
            self.paused_until = now + PAUSE_AFTER_ERROR
        if now - self.logged_at >= LOG_INTERVAL:
            self.logged_at = now
            _log.warning("rate limits not checked, %s: %r",
                         "votes let through (Redis is out)" if outage
                         else "a vote refused with 503 (Redis is slow)", exc)
        if not outage:
            raise RateLimitsUnavailable(
                "the rate limits could not be checked in time; try again")
        return 0, 0, 0

    def _outage(self, exc):
        """Whether Redis is out: the connection refused or dropped, or, after
        any other failure (a timeout, a check that waited too long), no
        answer to a PING."""
        if isinstance(exc, redis.ConnectionError):
            return True
        return not self._answers_ping()

    def _answers_ping(self):
        """One PING at a time: the checks that fail meanwhile wait for its
        answer, which then stands for ANSWERED_FOR seconds."""
        if time.monotonic() < self.answered_until:
            return True
        if self.probing is not None:
            return self.probing.wait()
        self.probing = Event()
        answered = False
        try:
            self._connect().ping()
            answered = True
        except redis.ResponseError:  # BUSY and the like: it is there
            answered = True
        except Exception:
            pass
        finally:
            if answered:
                self.answered_until = time.monotonic() + ANSWERED_FOR
            probing, self.probing = self.probing, None
            probing.send(answered)
        return answered

    def _flush(self, checks):
        self._connect()
        if self.cluster:
            return [self._run_apart(check) for check in checks]
        keys = {}
        encoded = [[[keys.setdefault(key, len(keys) + 1), rate.limit, rate.seconds * 1000, cost]
                    for key, rate, cost in check] for check in checks]
        sent = time.monotonic()
        replies = self._call(list(keys), encoded)
        results, at = [], 0
        for check in checks:
            results.append(tuple(replies[at:at + 3]))
            if replies[at]:
                self._refused(check[replies[at] - 1][0], replies[at + 1],
                              replies[at + 2], sent)
            at += 3
            for key, _, _ in check:
                self._leased(key, replies[at], replies[at + 1], sent)
                at += 2
        return results

    def _call(self, keys, encoded):
        return self.script(keys=keys, args=[json.dumps(encoded), LEASE_SHARE, MAX_LEASE])

    def _leased(self, key, votes, ttl_ms, sent):
        """Keep a lease the script granted (added to one still running). It
        ends ``ttl_ms`` after the call was sent: never after its window."""
        if votes <= 0:
            return
        lease = self.leases.pop(key, None)
        if lease is None or lease[1] <= time.monotonic():
            lease = [0, 0.0]
        lease[0] += votes
        lease[1] = sent + ttl_ms / 1000
        _keep(self.leases, key, lease, MAX_LEASES)  # the oldest goes, unspent

    def _refused(self, key, used, ttl_ms, sent):
        """Remember a limit that refused a check, until its window ends."""
        self.refused.pop(key, None)
        _keep(self.refused, key, [used, sent + ttl_ms / 1000], MAX_KNOWN)

    def _run_apart(self, check):
        for position, (key, rate, cost) in enumerate(check, 1):
            sent = time.monotonic()
            got = self._call([key], [[[1, rate.limit, rate.seconds * 1000, cost]]])
            if got[0]:
                self._refused(key, got[1], got[2], sent)
                return position, got[1], got[2]
            self._leased(key, got[3], got[4], sent)
        return 0, 0, 0


def _keep(table, key, entry, most):
    """table[key] = entry, the oldest entry dropped when ``most`` are kept."""
    if len(table) >= most:
        del table[next(iter(table))]
    table[key] = entry
