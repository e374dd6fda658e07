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

If Redis does not answer, votes are let through (fail-open): a limit is a
brake, not the guard of the counts. Each failure is counted in
``gateway_rate_limit_errors_total`` and logged at most every 10 s; for a
second after one, Redis is not asked, so an unreachable Redis costs no
vote a timeout.

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
import re
import time
from collections import namedtuple

from nameko.exceptions import ConfigurationError
from nameko.extensions import DependencyProvider
from redis.cluster import RedisCluster

from services import contracts
from services.gateway import metrics
from services.gateway.exceptions import RateLimited
from services.platform import redis_nodes
from services.platform.batching import Expired, GroupCommit
from services.platform.proxies import client_address, parse_networks
from services.platform.proxies import parse_ip as _address

_log = logging.getLogger(__name__)

PER_ADDRESS_CONFIG_KEY = "RATE_LIMIT_PER_ADDRESS"
PER_VOTER_CONFIG_KEY = "RATE_LIMIT_PER_VOTER"
TRUSTED_PROXIES_CONFIG_KEY = "TRUSTED_PROXIES"
REDIS_KEY = "votes"  # the entry of REDIS_URIS: the votes service's Redis
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
SOCKET_TIMEOUT = 0.5  # seconds: a Redis that hangs costs a vote this at most
WAIT_TIMEOUT = 1.0    # seconds a check may wait for its group, then fail-open
PAUSE_AFTER_ERROR = 1.0  # seconds Redis is not asked after a failure
LOG_INTERVAL = 10.0
MAX_GROUP = 200       # checks per Redis call
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

# ARGV[1]: [[[key index, limit, window ms, cost], ...], ...]: checks, each
# all-or-nothing over its limits; ARGV[2], ARGV[3]: the share of a limit's
# headroom leased with an accepted check (of a limit already used in its
# window), and the most leased. Returns per
# check: the position of the limit that refused it (0: accepted), that
# limit's count, and the milliseconds left in its window; then, per limit,
# the votes leased to the caller and the milliseconds its window has left.
CHECK_SCRIPT = """
local share, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, check in ipairs(cjson.decode(ARGV[1])) do
  local refused, refused_used, refused_ttl = 0, 0, 0
  local used, ttls = {}, {}
  for i, limit in ipairs(check) do
    local key = KEYS[limit[1]]
    local count = tonumber(redis.call('GET', key) or '0')
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then count, ttl = 0, limit[3] end
    used[i], ttls[i] = count, ttl
    if refused == 0 and count + limit[4] > limit[2] then
      refused, refused_used, refused_ttl = i, count, ttl
    end
  end
  out[#out + 1] = refused
  out[#out + 1] = refused_used
  out[#out + 1] = refused_ttl
  for i, limit in ipairs(check) do
    local lease = 0
    if refused == 0 then
      if used[i] > 0 then
        lease = math.max(0, math.min(most, math.floor((limit[2] - used[i] - limit[4]) * share)))
      end
      if used[i] == 0 then
        redis.call('SET', KEYS[limit[1]], limit[4] + lease, 'PX', limit[3])
      else
        redis.call('INCRBY', KEYS[limit[1]], limit[4] + lease)
      end
    end
    out[#out + 1] = lease
    out[#out + 1] = ttls[i]
  end
end
return out
"""

Rate = namedtuple("Rate", "name limit seconds")
Rate.__doc__ = """``limit`` votes per ``seconds``; ``name`` is the
setting's kind (address or voter), in keys and metrics."""

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)?\s*(second|minute|hour|day)s?\s*$")


def parse_rate(name, key, text):
    """A Rate from ``60/minute`` or ``100/10 seconds``; None when empty."""
    if text is None or str(text).strip() == "":
        return None
    match = _RATE.match(str(text))
    if match is None or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ConfigurationError(
            "{} must look like 60/minute or 100/10 seconds (got {!r})".format(
                key, text))
    seconds = int(match.group(2) or 1) * PERIODS[match.group(3)]
    return Rate(name, int(match.group(1)), seconds)


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def address_identity(address):
    """IPv6 addresses by their /64, the block one host gets."""
    parsed = _address(address)
    if parsed is not None and parsed.version == 6 and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network((parsed, 64), strict=False))
    return address


class RateLimits:
    """Checks each vote request against the configured limits; raises
    RateLimited over one."""

    def __init__(self, per_address, per_voter, trusted, submit):
        self.per_address, self.per_voter = per_address, per_voter
        self.trusted = trusted
        self.submit = submit  # submit(check) -> (position, used, ttl_ms)

    def check(self, environ, votes):
        limits = []  # (Rate, identity, cost)
        if self.per_address is not None:
            limits.append((self.per_address, address_identity(
                client_address(environ, self.trusted)), len(votes)))
        if self.per_voter is not None:
            voters = {}
            for vote in votes:
                if vote.voterId is not None:
                    voters[vote.voterId] = voters.get(vote.voterId, 0) + 1
            limits += [(self.per_voter, voter, cost) for voter, cost in voters.items()]
        if not limits:
            return
        position, used, ttl_ms = self.submit(limits)
        if position:
            rate = limits[position - 1][0]
            raise RateLimited(rate, used, ttl_ms)


def _key(rate, identity):
    return contracts.rate_key(rate.name, rate.seconds, identity)


class RateLimiter(DependencyProvider):
    """Injects the configured RateLimits, or None when no limit is set.

    On one Redis, the checks of concurrent requests go in one script call
    (services.platform.batching), each all-or-nothing. On a Redis Cluster,
    each limit is its own call (one key, one slot), address first: a
    request that a voter limit refuses has then used its address's
    allowance."""

    def setup(self):
        config = self.container.config
        per_address = parse_rate("address", PER_ADDRESS_CONFIG_KEY,
                                 config.get(PER_ADDRESS_CONFIG_KEY))
        per_voter = parse_rate("voter", PER_VOTER_CONFIG_KEY,
                               config.get(PER_VOTER_CONFIG_KEY))
        trusted = parse_networks(config.get(TRUSTED_PROXIES_CONFIG_KEY))
        self.limits = None
        self.client = None
        if per_address is None and per_voter is None:
            return
        self.uri = config["REDIS_URIS"][REDIS_KEY]
        self.paused_until = 0.0
        self.logged_at = 0.0
        self.leases = {}  # key -> [votes left, monotonic end of its window]
        self.group = GroupCommit(self._flush, max_weight=MAX_GROUP,
                                 max_wait=WAIT_TIMEOUT, deadline=WAIT_TIMEOUT)
        self.limits = RateLimits(per_address, per_voter, trusted, self._submit)

    def start(self):
        if self.limits is not None:
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
        counted and logged, when Redis does not answer. A check that this
        process's leases cover takes from them and asks nothing."""
        now = time.monotonic()
        check = [(_key(rate, identity), rate, cost) for rate, identity, cost in limits]
        leases = [self.leases.get(key) for key, _, _ in check]
        if all(lease is not None and lease[1] > now and lease[0] >= cost
               for lease, (_, _, cost) in zip(leases, check, strict=True)):
            for lease, (_, _, cost) in zip(leases, check, strict=True):
                lease[0] -= cost
            return 0, 0, 0
        if now < self.paused_until:
            metrics.rate_limit_errors.inc()
            return 0, 0, 0
        try:
            return self.group.submit(check)
        except Exception as exc:
            self._failed(exc)
            return 0, 0, 0

    def _failed(self, exc):
        metrics.rate_limit_errors.inc()
        now = time.monotonic()
        if not isinstance(exc, Expired):
            self.paused_until = now + PAUSE_AFTER_ERROR
        if now - self.logged_at >= LOG_INTERVAL:
            self.logged_at = now
            _log.warning("rate limits not checked, votes let through: %r", exc)

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
        if len(self.leases) >= MAX_LEASES:  # the oldest goes, unspent
            del self.leases[next(iter(self.leases))]
        self.leases[key] = lease

    def _run_apart(self, check):
        for position, (key, rate, cost) in enumerate(check, 1):
            sent = time.monotonic()
            got = self._call([key], [[[1, rate.limit, rate.seconds * 1000, cost]]])
            if got[0]:
                return position, got[1], got[2]
            self._leased(key, got[3], got[4], sent)
        return 0, 0, 0
