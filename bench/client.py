"""A small asyncio HTTP/1.1 client (keep-alive, no pipelining) for the
phases where every answer must be seen: filling queues with known numbers
of votes, and the open-loop latency probe."""
import asyncio
import json
import time

import redis.asyncio

from services import contracts


class Connection:

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.reader = self.writer = None
        self.reusable = True

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def request(self, method, path, body=None, headers=None):
        head = "{} {} HTTP/1.1\r\nHost: {}:{}\r\n".format(
            method, path, self.host, self.port)
        for name, value in (headers or {}).items():
            head += "{}: {}\r\n".format(name, value)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: {}\r\n".format(
                len(body))
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            data = b"".join(chunks)
        else:
            data = await self.reader.read()
            self.reusable = False
        if headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0"):
            self.reusable = False
        return status, data


class Pool:
    """At most ``size`` connections, reused; a request waits for one."""

    def __init__(self, host, port, size):
        self.host = host
        self.port = port
        self.idle = []
        self.slots = asyncio.Semaphore(size)
        self.opened = 0

    async def request(self, method, path, body=None, headers=None):
        async with self.slots:
            conn = self.idle.pop() if self.idle else None
            if conn is None:
                conn = await Connection(self.host, self.port).open()
                self.opened += 1
            try:
                result = await conn.request(method, path, body, headers)
            except BaseException:
                conn.close()
                raise
            if conn.reusable:
                self.idle.append(conn)
            else:
                conn.close()
            return result

    def close(self):
        for conn in self.idle:
            conn.close()
        self.idle = []


def batch_body(votes):
    return json.dumps({"votes": votes}, separators=(",", ":")).encode()


async def _post_batches(host, port, bodies, concurrency, keys, interval, retries):
    pool = Pool(host, port, concurrency)
    accepted = 0
    failures = {}
    start = time.perf_counter()

    def failed(what):
        failures[what] = failures.get(what, 0) + 1

    async def post(i, body, key):
        nonlocal accepted
        if interval:  # open loop: body i at its time, whatever came before
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        headers = None if key is None else {"Idempotency-Key": key}
        for attempt in range(1 + retries):
            try:
                status, data = await pool.request("POST", "/votes", body, headers)
            except (OSError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
            if status == 202:
                accepted += json.loads(data)["accepted"]
                return
            if attempt == retries or (isinstance(status, int) and status < 500):
                failed(status)
                return
            # the same key again: counted at most once (Retry-After: 1)
            failed("retried after {}".format(status))
            await asyncio.sleep(1.0)

    try:
        await asyncio.gather(*(post(i, body, key) for i, (body, key) in enumerate(
            zip(bodies, keys or [None] * len(bodies), strict=True))))
    finally:
        pool.close()
    return accepted, failures


def post_batches(host, port, bodies, concurrency=16, keys=None, interval=0, retries=0):
    """POST every body to /votes (body i with Idempotency-Key keys[i], if
    given; with an ``interval``, body i ``i * interval`` s after the start,
    not before; a 5xx or a broken connection tried again up to ``retries``
    times, with its key: give keys then); returns (votes accepted,
    {failure: n}, seconds). Every answer is read, so ``accepted`` is
    exact."""
    start = time.perf_counter()
    accepted, failures = asyncio.run(
        _post_batches(host, port, bodies, concurrency, keys, interval, retries))
    return accepted, failures, time.perf_counter() - start


async def _get_all(host, port, paths, concurrency):
    pool = Pool(host, port, concurrency)

    async def get(path):
        status, data = await pool.request("GET", path)
        return status, (json.loads(data) if data else None)

    try:
        return await asyncio.gather(*(get(path) for path in paths))
    finally:
        pool.close()


def get_all(host, port, paths, concurrency=16):
    return asyncio.run(_get_all(host, port, paths, concurrency))


def percentile(values, pct):
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _latency(host, port, redis_uri, rate, duration, probe_every,
                   background_prefix, background_posts, probe_prefix,
                   max_connections, visible_timeout):
    """Open loop: vote i is sent at start + i/rate whatever the answers
    before it (on a free connection, or a new one up to max_connections).
    Every k-th vote is a probe on a post of its own; from its 202 on, Redis
    is polled (what /vote-counts reads) until the vote is counted there,
    unless ``redis_uri`` is None. ``acked_at``: each probe's post -> the
    time.perf_counter() of its 202."""
    pool = Pool(host, port, max_connections)
    store = redis.asyncio.Redis.from_url(redis_uri) if redis_uri else None
    total = int(rate * duration)
    stats = {
        "sent": 0, "accepted": 0, "failed": {}, "ack_ms": [], "visible_ms": [],
        "lost": [], "late_sends": 0, "max_send_lag_ms": 0.0, "probes": [],
        "max_poll_gap_ms": 0.0, "acked_at": {},
    }
    pending = {}  # probe key -> time of its 202
    done_sending = asyncio.Event()
    tasks = set()

    async def send(i, scheduled):
        probe = i % probe_every == 0
        if probe:
            post = "{}{}".format(probe_prefix, i)
        else:
            post = "{}{}".format(background_prefix, i % background_posts)
        path = "/vote?postId={}&score=1".format(post)
        stats["sent"] += 1
        try:
            status, _ = await pool.request("GET", path)
        except (OSError, asyncio.IncompleteReadError) as exc:
            name = type(exc).__name__
            stats["failed"][name] = stats["failed"].get(name, 0) + 1
            return
        now = time.perf_counter()
        if status != 202:
            stats["failed"][status] = stats["failed"].get(status, 0) + 1
            return
        stats["accepted"] += 1
        stats["ack_ms"].append((now - scheduled) * 1000)
        if probe:
            stats["probes"].append(post)
            stats["acked_at"][post] = now
            if store is not None:
                pending[contracts.post_key(post)] = now

    async def poll():
        last = None
        while not (done_sending.is_set() and not pending and not tasks):
            # how often the poller really ran: its gaps bound the error
            now = time.perf_counter()
            if last is not None and pending:
                gap = (now - last) * 1000
                stats["max_poll_gap_ms"] = max(stats["max_poll_gap_ms"], gap)
            last = now
            if pending:
                keys = list(pending)
                async with store.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.exists(key)
                    found = await pipe.execute()
                now = time.perf_counter()
                for key, exists in zip(keys, found, strict=True):
                    acked = pending[key]
                    if exists:
                        stats["visible_ms"].append((now - acked) * 1000)
                        del pending[key]
                    elif now - acked > visible_timeout:
                        stats["lost"].append(key)
                        del pending[key]
            await asyncio.sleep(0.0005)

    poller = asyncio.ensure_future(poll() if store is not None else done_sending.wait())
    start = time.perf_counter()
    try:
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = -delay * 1000
                if lag > 5:
                    stats["late_sends"] += 1
                stats["max_send_lag_ms"] = max(stats["max_send_lag_ms"], lag)
            task = asyncio.ensure_future(send(i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        stats["send_seconds"] = time.perf_counter() - start
        if tasks:
            await asyncio.gather(*list(tasks))
        done_sending.set()
        await poller
    finally:
        poller.cancel()
        for task in list(tasks):
            task.cancel()
        pool.close()
        if store is not None:
            await store.aclose()
    stats["connections"] = pool.opened
    return stats


def probe_every(rate, probe_rate):
    """One vote in how many is a probe, for about ``probe_rate`` a second."""
    return max(1, round(rate / probe_rate))


def probe_posts(rate, duration, every, probe_prefix="lp-"):
    """The posts the probes of latency() will vote on, known in advance."""
    return ["{}{}".format(probe_prefix, i) for i in range(0, int(rate * duration), every)]


def latency(host, port, redis_uri, rate, duration, probe_rate=100,
            background_prefix="lt-", background_posts=1000, probe_prefix="lp-",
            max_connections=256, visible_timeout=10.0, every=None):
    """``every``: one vote in how many is a probe (by default, from
    ``probe_rate``)."""
    return asyncio.run(_latency(
        host, port, redis_uri, rate, duration,
        every or probe_every(rate, probe_rate), background_prefix,
        background_posts, probe_prefix, max_connections, visible_timeout))
