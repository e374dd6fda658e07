"""Real processes against real servers, for the fault tests.

Each test gets a RabbitMQ vhost and a private redis-server of its own; the
services run as ``nameko run`` subprocesses (one process per service, logs
in files under tmp_path); a load generator votes through the gateway from
concurrent green threads and records every answer with its latency; the
checks wait for the votes queue to drain, then compare what Redis counted,
post by post and upvote/downvote apart, with what the gateway answered 202.
"""
import collections
import contextlib
import itertools
import json
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import eventlet
import redis
import requests
import yaml
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange
from prometheus_client.parser import text_string_to_metric_families

from harness import rabbit
from harness.process import (
    GATEWAY,
    START_TIMEOUT,
    VOTES,
    Process,
    free_port,
    wait_until,
    write_config,
)
from harness.redis_server import RedisServer
from services import contracts

VOTES_QUEUE = contracts.VOTES_QUEUE
RPC_QUEUE = contracts.RPC_QUEUE
DEAD_LETTER_QUEUE = contracts.DEAD_LETTER_QUEUE

DRAIN_TIMEOUT = 60      # every accepted vote counted
RECOVERY_TIMEOUT = 10   # service answers again after a server came back
# a 503 comes within PUBLISH_TIMEOUT (5 s) of the request, answer included,
# even when a broker that stalls publishes (a disk alarm) uses it all up:
# the publisher gives up 0.25 s before it, for the answer's way out
REFUSAL_BOUND = 5.0
COUNT_FIELDS = ("upvote", "downvote")  # of a post's hash (it has createdAt too)
SIGTERM_BOUND = 10      # a process exits within this of SIGTERM
HANG_BOUND = 5.5        # no answer at all takes longer than this
REQUEST_TIMEOUT = 15    # client side: a hang shows as a slow error, not a stuck test
REFUSED_PAUSE = 0.2     # a client pauses after a 503, as Retry-After asks
MAX_VOTES = 20000       # hard cap of one load run
RATE = 400              # votes per second of one load run, at most
SAMPLE_READS = 5        # posts also read back through GET /vote-counts


def terminate(process, label):
    """SIGTERM, then problems if it did not exit cleanly within
    SIGTERM_BOUND seconds (it is killed then)."""
    signalled = time.monotonic()
    process.signal(signal.SIGTERM)
    code = process.wait_exit(SIGTERM_BOUND)
    took = time.monotonic() - signalled
    process.kill()
    print("\n[{}] exit code {} {:.2f}s after SIGTERM".format(label, code, took))
    if code == 0:
        return []
    return ["{} did not exit cleanly within {}s of SIGTERM: exit code {}".format(
        process.label, SIGTERM_BOUND, code)]


@contextlib.contextmanager
def rabbitmq_stopped(cluster):
    """The test's RabbitMQ node (see conftest: a private one) stopped for
    the block, started again (whatever happens) and answering after it.
    Yields the outage's times: going (stop asked), gone (stopped), back
    (answering again)."""
    outage = SimpleNamespace(going=time.monotonic(), gone=None, back=None)
    try:
        cluster.broker.stop_app()
        outage.gone = time.monotonic()
        yield outage
    finally:
        cluster.broker.start_app()
        wait_until(cluster.broker_answers, 60, "RabbitMQ to answer again")
        outage.back = time.monotonic()


@contextlib.contextmanager
def consumer_unserved(cluster, queue):
    """The broker stops serving every consumer of the queues whose name
    starts with ``queue``: the Erlang processes of their channels are
    suspended (they take no frame and send no delivery, while the
    connection and its heartbeats carry on), and resumed after the block.
    Yields how many channels were suspended."""
    def each_channel(action):
        done = cluster.broker.ctl("eval", (
            '[sys:{}(proplists:get_value(channel_pid, C)) || C <- '
            'rabbit_amqqueue:consumers_all(<<"{}">>), lists:prefix("{}", '
            'binary_to_list(element(4, proplists:get_value(queue_name, C))))].'
        ).format(action, cluster.vhost, queue))
        return done.stdout.count("ok")
    try:
        yield each_channel("suspend")
    finally:
        each_channel("resume")  # a channel killed meanwhile is skipped


class FaultRedis(RedisServer):
    """The private redis-server of a fault test: no persistence but what
    stop() saves, and DEBUG on, for freeze()."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, "--appendonly", "no",
                         "--enable-debug-command", "yes")

    def freeze(self, seconds, lead=0.3):
        """Block the server for ``seconds`` (DEBUG SLEEP); return after
        ``lead`` seconds, its clients' commands queued up behind it."""
        def sleep():
            with self.client() as client:
                client.execute_command("DEBUG", "SLEEP", seconds)
        eventlet.spawn(sleep)
        time.sleep(lead)

    def used_memory(self):
        with self.client() as client:
            return int(client.info("memory")["used_memory"])

    def set_maxmemory(self, limit):
        with self.client() as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", limit)

    def fill_until_oom(self, headroom=2 << 20, sizes=(16 << 10, 512, 8),
                       margin=512 << 10, max_keys=100000):
        """Set maxmemory ``headroom`` bytes above what is used now (no
        eviction), then write filler keys (``fill:<n>``) until Redis refuses
        a write with OOM, with values of each of ``sizes`` in turn: the
        query buffer of a big write counts too, so only a refused tiny one
        leaves Redis over its limit. Then maxmemory goes ``margin`` bytes
        under what is used, so that no write gets in until it is raised.
        Returns the number of keys written."""
        self.set_maxmemory(self.used_memory() + headroom)
        n = 0
        with self.client() as client:
            for size in sizes:
                while True:
                    if n >= max_keys:
                        raise AssertionError("no OOM after {} keys".format(n))
                    try:
                        client.set("fill:{}".format(n), "x" * size)
                    except redis.exceptions.OutOfMemoryError:
                        break
                    n += 1
        # freed client buffers would let some writes in now and then:
        # hold the limit well under what is used
        self.set_maxmemory(self.used_memory() - margin)
        return n


class Cluster:
    """The services of one test, on its own vhost and its own Redis;
    ``broker``: the harness.rabbit_node.RabbitNode of ``amqp_uri``, when
    not the machine's RabbitMQ (rabbitmq_stopped needs one)."""

    def __init__(self, tmp_path, amqp_uri, vhost, redis_server, broker=None,
                 settings=None):
        self.tmp_path = tmp_path
        self.broker = broker
        self.settings = settings  # more config.yml values
        self.amqp_uri = amqp_uri
        self.vhost = vhost
        self.redis_server = redis_server
        self.redis = redis_server.client()
        self.web_port = free_port()
        self.base_url = "http://127.0.0.1:{}".format(self.web_port)
        self.processes = []
        self._serial = itertools.count(1)

    def _run(self, module, label, web_port=None):
        name = "{}-{}".format(label, next(self._serial))
        port = web_port or self.web_port
        config = write_config(self.tmp_path / (name + ".yml"), self.amqp_uri,
                              self.redis_server.uri, port, settings=self.settings)
        process = Process.nameko(label, module, config, self.tmp_path / (name + ".log"),
                                 port=port)
        self.processes.append(process)
        return process.start()

    def start_gateway(self, web_port=None):
        """Start a gateway, on the cluster's port or on ``web_port``."""
        gateway = self._run(GATEWAY, "gateway", web_port)
        # any answer will do, a 404 comes quickest
        gateway.wait_http("/no-such-page", START_TIMEOUT)
        return gateway

    def start_votes(self, consumers=1):
        """Start one votes process; wait until ``consumers`` consume."""
        votes = self._run(VOTES, "votes")

        def consuming():
            assert votes.alive, "votes exited:\n" + votes.tail()
            return (self.queue_state(VOTES_QUEUE)[1] >= consumers
                    and self.queue_state(RPC_QUEUE)[1] >= consumers)
        wait_until(consuming, START_TIMEOUT, "the votes service to consume")
        return votes

    def queue_state(self, name):
        """(ready messages, consumers); (0, 0) when it does not exist yet."""
        return rabbit.queue_state(self.amqp_uri, name)

    def queue_messages(self, name):
        """Ready plus unacknowledged messages."""
        return rabbit.queue_messages(self.vhost, name,
                                     node=self.broker.name if self.broker else None)

    def metrics(self, process):
        """{(name, ((label, value), ...)): value} of the samples a votes
        process serves on its METRICS_ADDRESS, or a gateway on its port;
        {} when it does not answer."""
        if process.label == "gateway":
            url = "http://127.0.0.1:{}/metrics".format(process.port)
        else:
            config = Path(process.argv[process.argv.index("--config") + 1])
            url = "http://{}/metrics".format(
                yaml.safe_load(config.read_text())["METRICS_ADDRESS"])
        try:
            text = requests.get(url, timeout=5).text
        except requests.RequestException:
            return {}
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples}

    def broker_answers(self):
        return rabbit.broker_answers(self.amqp_uri)

    def load(self, base_urls=None, **options):
        return Load(base_urls or [self.base_url], **options)

    def counted(self):
        """postId -> Counter(upvote=, downvote=) of every post in Redis."""
        counts = {}
        for key in self.redis.scan_iter(contracts.POST_KEY_PATTERN, count=1000):
            counts[contracts.post_id_of(key)] = post_counts(
                self.redis.hmget(key, COUNT_FIELDS))
        return counts

    def read_through_gateway(self, post_id):
        """(status, JSON body) of GET /vote-counts, or (None, error)."""
        try:
            response = requests.get(self.base_url + "/vote-counts",
                                    params={"postId": post_id}, timeout=10)
            return response.status_code, response.json()
        except (requests.RequestException, ValueError) as exc:
            return None, repr(exc)

    # predicates of recovery, for within_recovery()

    def consuming(self, consumers=1):
        return lambda: self.queue_state(VOTES_QUEUE)[1] >= consumers

    def reading(self, load):
        return lambda: self.read_through_gateway(load.accepted()[0].post)[0] == 200

    def counting_beyond(self, votes):
        return lambda: total(self.counted()) > votes

    def close(self, show_logs=False):
        for process in self.processes:
            process.kill()
        self.redis.close()
        if show_logs:
            for process in self.processes + [self.redis_server.process]:
                print("\n----- {} ({}) last lines -----\n{}".format(
                    process.label, process.log_path, process.tail()))


Answer = collections.namedtuple(
    "Answer", "post score status error started latency url")


class Load:
    """Concurrent clients voting through the gateway until stopped, every
    answer recorded, at most ``rate`` votes a second. Vote i goes to post
    ``<prefix><i % posts>`` (or to a post of its own with ``unique=True``);
    every third vote is a downvote."""

    def __init__(self, base_urls, clients=8, posts=8, prefix="p", unique=False,
                 limit=MAX_VOTES, rate=RATE):
        # vote i goes to gateway i % len(base_urls)
        self.urls = [base_url + "/vote" for base_url in base_urls]
        self.clients = clients
        self.posts = posts
        self.prefix = prefix
        self.unique = unique
        self.limit = limit
        self.interval = clients / rate  # of one client
        self.answers = []
        self._next = itertools.count()
        self._stopping = False
        self._threads = []

    def __enter__(self):
        self._threads = [eventlet.spawn(self._client)
                         for _ in range(self.clients)]
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        self._stopping = True
        for thread in self._threads:
            thread.wait()

    def _client(self):
        with requests.Session() as session:
            due = time.monotonic()
            for i in self._next:
                if self._stopping or i >= self.limit:
                    return
                time.sleep(max(0, due - time.monotonic()))
                due = max(due + self.interval, time.monotonic() - 1)
                self._vote(session, i)

    def _vote(self, session, i):
        post = "{}{}".format(self.prefix, i if self.unique else i % self.posts)
        url = self.urls[i % len(self.urls)]
        score = -1 if i % 3 == 0 else 1
        status = error = None
        started = time.monotonic()
        try:
            response = session.get(url, params={"postId": post, "score": score},
                                   timeout=REQUEST_TIMEOUT)
            status = response.status_code
            if status != 202:
                error = "{} Retry-After={}".format(
                    response.text[:200], response.headers.get("Retry-After"))
        except requests.RequestException as exc:
            error = repr(exc)
        self.answers.append(Answer(post, score, status, error, started,
                                   time.monotonic() - started, url))
        if status != 202:
            time.sleep(REFUSED_PAUSE)

    def wait_sent(self, n, timeout=120):
        """Block until ``n`` more votes have been answered."""
        target = len(self.answers) + n
        wait_until(lambda: len(self.answers) >= target, timeout,
                   "{} votes answered (have {})".format(target, len(self.answers)))

    def accepted(self):
        return [a for a in self.answers if a.status == 202]

    def refused(self):
        return [a for a in self.answers if a.status == 503]

    def accepting_since(self, since):
        return lambda: any(a.status == 202 and a.started >= since
                           for a in self.answers[-100:])

    def refused_in_flight(self, start, end):
        """Refused votes whose request was open at some moment of
        [start, end]: the gateway may have published them just before the
        broker went away, without getting the confirm."""
        return [a for a in self.refused()
                if a.started <= end and a.started + a.latency >= start]


def tally(answers):
    counts = collections.defaultdict(collections.Counter)
    for answer in answers:
        counts[answer.post]["upvote" if answer.score == 1 else "downvote"] += 1
    return dict(counts)


def total(counts):
    return sum(sum(counter.values()) for counter in counts.values())


def _covered(counted, expected):
    return all(counted.get(post, collections.Counter()) >= counter
               for post, counter in expected.items())


def settle(cluster, expected):
    """Wait until every expected vote is counted and the votes queue holds
    nothing, ready or unacked; then the final counts."""
    wait_until(lambda: cluster.queue_state(VOTES_QUEUE)[0] == 0
               and _covered(cluster.counted(), expected),
               DRAIN_TIMEOUT, "every accepted vote to be counted", interval=0.5)
    wait_until(lambda: cluster.queue_messages(VOTES_QUEUE) == 0,
               DRAIN_TIMEOUT, "the votes queue to be empty", interval=1)
    return cluster.counted()


def summary(label, load, counted):
    latencies = [a.latency for a in load.answers] or [0]
    return ("[{}] sent={} accepted={} refused={} other={} counted={} "
            "(expected {}) posts={} max_latency={:.2f}s".format(
                label, len(load.answers), len(load.accepted()),
                len(load.refused()),
                len(load.answers) - len(load.accepted()) - len(load.refused()),
                total(counted), len(load.accepted()), len(counted),
                max(latencies)))


def within_recovery(since, checks, timeout=RECOVERY_TIMEOUT, label=None):
    """Problems for each of ``checks`` ({what: predicate}) not true within
    ``timeout`` seconds of ``since`` (when a server came back). With a
    ``label``, prints how long each took: the recovery times."""
    problems = []
    for what, predicate in checks.items():
        try:
            wait_until(predicate, since + timeout - time.monotonic(),
                       what + " within {}s".format(timeout), interval=0.1)
        except AssertionError as exc:
            problems.append(str(exc))
        else:
            if label:
                print("\n[{}] recovery: {} {:.1f}s after".format(
                    label, what, time.monotonic() - since))
    return problems


def store_errors(cluster, votes, kind):
    """votes_store_errors_total{kind} of a votes process."""
    return cluster.metrics(votes).get(
        ("votes_store_errors_total", (("kind", kind),)), 0)


def store_fault(cluster, votes, load, kinds, seconds, min_accepted=500):
    """Redis has just stopped taking the votes service's writes (the
    caller saw to it): wait until the votes process meets errors of one of
    ``kinds``, then out the fault's ``seconds`` (from now). Returns
    (problems, counts at its end, a line of its figures): problems if the
    counts moved once it held, fewer than ``min_accepted`` votes were
    answered 202 meanwhile, or anything was dead-lettered."""
    since = time.monotonic()
    accepted_before = len(load.accepted())

    def errors():
        return sum(store_errors(cluster, votes, kind) for kind in kinds)
    wait_until(errors, 10, "the votes service to meet {}".format("/".join(kinds)))
    time.sleep(1)  # events in flight at the fault settle either way
    counted_in = total(cluster.counted())
    time.sleep(max(0, since + seconds - time.monotonic()))
    counted_late = total(cluster.counted())
    accepted = len(load.accepted()) - accepted_before
    dead = cluster.queue_messages(DEAD_LETTER_QUEUE)
    problems = []
    if counted_late != counted_in:
        problems.append("votes were counted while Redis refused writes ({} -> {}): "
                        "the fault did not hold".format(counted_in, counted_late))
    if accepted < min_accepted:
        problems.append("only {} votes answered 202 during the fault".format(accepted))
    if dead:
        problems.append("{} messages dead-lettered during the fault".format(dead))
    figures = ("{} votes answered 202 during {} s; {} errors {} met; counted {} "
               "then {}".format(accepted, seconds, "/".join(kinds), errors(),
                                counted_in, counted_late))
    return problems, counted_late, figures


def nothing_dead_lettered(cluster, votes):
    """Problems if the dead-letter queue holds anything, or the votes
    process counted a dead letter."""
    dead = cluster.queue_messages(DEAD_LETTER_QUEUE)
    if dead:
        return ["{} messages in {}".format(dead, DEAD_LETTER_QUEUE)]
    dead = cluster.metrics(votes).get(("votes_dead_lettered_total", ()))
    if dead != 0:
        return ["votes_dead_lettered_total is {}".format(dead)]
    return []


def verify(label, cluster, load, problems=(), in_doubt=(), refusals=False,
           after=None):
    """The outcome assertions every fault test shares; prints the figures
    and puts them in the assertion message.

    Every 202 vote counted exactly once, nothing else counted except votes
    in ``in_doubt`` (refused, but perhaps published); every answer a 202 or
    (only if ``refusals``) a 503 BROKER_UNAVAILABLE with Retry-After within
    the bound; no answer hangs; the gateway's read path agrees with Redis.
    ``problems`` are the test's own findings; ``after()`` returns more,
    found once the votes queue has drained."""
    failures = list(problems)
    expected = tally(load.accepted())
    try:
        counted = settle(cluster, expected)
    except AssertionError as exc:
        ready, consumers = cluster.queue_state(VOTES_QUEUE)
        failures.append("{}; the votes queue then: {} ready, {} ready or "
                        "unacked, {} consumers".format(
                            exc, ready, cluster.queue_messages(VOTES_QUEUE),
                            consumers))
        counted = cluster.counted()
    line = summary(label, load, counted)
    print("\n" + line)
    failures += _answer_problems(load, refusals)
    failures += _count_problems(counted, expected, tally(in_doubt))
    if in_doubt:
        print("[{}] {} refused votes were in flight when the broker went away; "
              "{} votes more than accepted were counted".format(
                  label, len(in_doubt), total(counted) - total(expected)))
    failures += _read_problems(cluster, counted)
    if after is not None:
        failures += after()
    assert not failures, line + "\n" + "\n".join(failures)
    return counted


def post_counts(values):
    """Counter(upvote=, downvote=) of a post's HMGET of COUNT_FIELDS (a
    count of 0 left out)."""
    return collections.Counter({name: int(value)
                                for name, value in zip(COUNT_FIELDS, values, strict=True)
                                if value and int(value)})


def _answer_problems(load, refusals):
    problems = []
    others = [a for a in load.answers if a.status not in (202, 503)]
    if others:
        problems.append("{} answers neither 202 nor 503, e.g. {}".format(
            len(others), others[:3]))
    bad = [a for a in load.refused() if not refusals
           or a.latency > REFUSAL_BOUND
           or '"BROKER_UNAVAILABLE"' not in a.error
           or "Retry-After=None" in a.error]
    if bad:
        problems.append("{} unexpected 503s (503s allowed: {}), e.g. {}".format(
            len(bad), refusals, bad[:3]))
    slow = [a for a in load.answers if a.latency > HANG_BOUND]
    if slow:
        problems.append("{} answers took over {}s, e.g. {}".format(
            len(slow), HANG_BOUND, slow[:3]))
    return problems


def _count_problems(counted, expected, doubt):
    wrong = {}
    for post in set(counted) | set(expected):
        got = counted.get(post, collections.Counter())
        low = expected.get(post, collections.Counter())
        if not low <= got <= low + doubt.get(post, collections.Counter()):
            wrong[post] = (dict(got), dict(low))
    if not wrong:
        return []
    return ["{} posts counted wrong; post: (counted, accepted): {}".format(
        len(wrong), dict(sorted(wrong.items())[:10]))]


def _read_problems(cluster, counted):
    """A few posts read back through GET /vote-counts must match Redis."""
    for post in sorted(counted)[:SAMPLE_READS]:
        want = {"postId": post, "upvote": counted[post]["upvote"],
                "downvote": counted[post]["downvote"]}
        want["score"] = want["upvote"] - want["downvote"]
        got = cluster.read_through_gateway(post)
        if got != (200, want):
            return ["GET /vote-counts?postId={} gave {}, Redis has {}".format(
                post, got, want)]
    return []


# malformed vote_cast events: (content type, content encoding, the dead
# letter's reason, body of n: raw bytes, or a value to send as JSON)
JSON, TEXT, BINARY = "application/json", "utf-8", "binary"
UNDECODABLE, INVALID = "undecodable body", "invalid payload"
_VOTE = {"voteId": "v{n}", "postId": "bad", "score": 1, "ts": 1}


def _event(**changes):
    event = {"id": "bad-{n}", "votes": [dict(_VOTE)]}
    event.update(changes)
    return event


def _vote_event(**changes):
    return _event(votes=[dict(_VOTE, **changes)])


MALFORMED = [
    # invalid JSON
    (JSON, TEXT, UNDECODABLE, lambda n: b'{"id": "bad-%d", "votes": [' % n),
    (JSON, TEXT, UNDECODABLE, lambda n: b"bad-%d not json" % n),
    # wrong content types: refused by the decoder, or passed on undecoded
    ("text/plain", TEXT, UNDECODABLE, lambda n: b"id=bad-%d&score=1" % n),
    ("application/x-python-serialize", BINARY, UNDECODABLE,
     lambda n: b"\x80\x04bad-%d" % n),
    ("application/data", BINARY, INVALID, lambda n: b"\x00bad-%d" % n),
    # missing fields
    (JSON, TEXT, INVALID, lambda n: {"id": "bad-{n}"}),
    (JSON, TEXT, INVALID,
     lambda n: _event(votes=[{"voteId": "v{n}", "score": 1, "ts": 1}])),
    # bad scores
    (JSON, TEXT, INVALID, lambda n: _vote_event(score=2)),
    (JSON, TEXT, INVALID, lambda n: _vote_event(score=0)),
    (JSON, TEXT, INVALID, lambda n: _vote_event(score="1")),
    (JSON, TEXT, INVALID, lambda n: _vote_event(score=1.5)),
    (JSON, TEXT, INVALID, lambda n: _vote_event(score=True)),
    # wrong types
    (JSON, TEXT, INVALID, lambda n: _event(id=n)),
    (JSON, TEXT, INVALID, lambda n: _event(votes={"postId": "bad"})),
    (JSON, TEXT, INVALID, lambda n: _vote_event(ts="1")),
    (JSON, TEXT, INVALID, lambda n: [n, "bad"]),
    (JSON, TEXT, INVALID, lambda n: "bad-{n}"),
]


def publish_malformed(amqp_uri, count, pause=0.005):
    """Publish ``count`` malformed vote_cast events straight to the
    gateway's event exchange, a pause after each. Returns the dead-letter
    reason each body must get: {body: reason}."""
    exchange = get_event_exchange("gateway", {})
    reasons = {}
    with Connection(amqp_uri) as connection:
        producer = Producer(connection.channel())
        for n in range(count):
            content_type, encoding, reason, make = MALFORMED[n % len(MALFORMED)]
            body = make(n)
            if not isinstance(body, bytes):  # made unique by n
                body = json.dumps(body).replace("{n}", str(n)).encode()
            producer.publish(body, exchange=exchange, routing_key=contracts.VOTE_CAST,
                             content_type=content_type, content_encoding=encoding,
                             delivery_mode=2, declare=[exchange])
            reasons[body] = reason
            time.sleep(pause)  # interleave with the HTTP votes
    return reasons


def take_dead_letters(amqp_uri):
    """Take every message off the dead-letter queue: [(body, reason)].
    The reason is x-dead-letter-reason up to its first colon."""
    taken = []
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        while True:
            message = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=True)
            if message is None:
                return taken
            body = message.body  # py-amqp decodes a text content_encoding
            reason = message.headers.get("x-dead-letter-reason") or ""
            taken.append((body.encode() if isinstance(body, str) else body,
                          reason.split(":")[0]))
