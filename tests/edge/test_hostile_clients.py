"""Hostile clients against the real gateway over real sockets: nothing a
client sends may stop the service, starve other clients, or cost it more
than its limits (README, "Limits and protections")."""
import json
import signal
import socket
import struct
import time
from collections import Counter, namedtuple

import amqp
import eventlet
import pytest
import requests
from kombu import Connection

from harness.process import wait_until
from harness.redis_server import RedisServer
from tests.conftest import HEALTH_OK
from tests.edge.conftest import EDGE_LIMITS, log_with, start_service
from tests.fault.harness import (
    SIGTERM_BOUND,
    VOTES_QUEUE,
    Cluster,
    settle,
    tally,
)

HEADER_TIMEOUT = EDGE_LIMITS["HTTP_HEADER_TIMEOUT"]
BODY_TIMEOUT = EDGE_LIMITS["HTTP_BODY_TIMEOUT"]
SCHEDULING_SLACK = 1.0  # seconds a cut may come after its deadline
ANSWER_BOUND = 1.0      # /health and a vote answered within this, under attack
MIB = 1024 * 1024
Vote = namedtuple("Vote", "post score status")


def connect(edge, timeout=10):
    sock = socket.create_connection(edge.address, timeout=timeout)
    return sock


def reset(sock):
    """Close with a TCP reset (SO_LINGER 0), as a client that vanishes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_answer(sock):
    """(status, JSON body) of the one answer on ``sock``, read to EOF."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None, head


def assert_serving(edge):
    """/health and a vote answered exactly, each within ANSWER_BOUND."""
    started = time.monotonic()
    health = edge.get("/health")
    took = time.monotonic() - started
    assert (health.status_code, health.json()) == (200, HEALTH_OK)
    assert took < ANSWER_BOUND, "/health took {:.2f}s".format(took)
    started = time.monotonic()
    vote = edge.get("/vote", params={"postId": "edge", "score": "1"})
    took = time.monotonic() - started
    assert vote.status_code == 202, vote.text
    assert vote.json() == {"success": True, "voteId": vote.json()["voteId"],
                           "postId": "edge", "score": 1}
    assert took < ANSWER_BOUND, "the vote took {:.2f}s".format(took)


BAD_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400,
     {"error": "BAD_REQUEST", "message": "Bad request syntax ('GARBAGE')"}),
    (b"GET /vote?postId=" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n", 414,
     {"error": "URI_TOO_LONG", "message": "request line is longer than 8192 bytes"}),
    (b"GET /health HTTP/1.1\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n", 431,
     {"error": "HEADERS_TOO_LARGE",
      "message": "request headers are larger than 16384 bytes"}),
    (b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400,
     {"error": "BAD_REQUEST",
      "message": "Content-Length must be one decimal number of at most 20 digits"}),
    # int() of 5,000 digits raised: no answer and a traceback
    (b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400,
     {"error": "BAD_REQUEST",
      "message": "Content-Length must be one decimal number of at most 20 digits"}),
    (b"POST /votes HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413,
     {"error": "PAYLOAD_TOO_LARGE", "message": "request body is larger than 1048576 bytes"}),
    (b"POST /votes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", 411,
     {"error": "LENGTH_REQUIRED", "message": "a request body needs a Content-Length"}),
    # RFC 9112: each of these is 400 and the connection closed
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\nab", 400,
     {"error": "BAD_REQUEST",
      "message": "whitespace between a header field name and its colon"}),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tmore\r\n\r\n", 400,
     {"error": "BAD_REQUEST",
      "message": "a header line starts with whitespace (obsolete line folding)"}),
    (b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
     400, {"error": "BAD_REQUEST", "message": "Content-Length is given more than once"}),
    (b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     {"error": "BAD_REQUEST", "message": "Transfer-Encoding and Content-Length together"}),
    (b"GET /health HTTP/1.1\r\n\r\n", 400,
     {"error": "BAD_REQUEST", "message": "an HTTP/1.1 request needs one Host header"}),
]


@pytest.mark.parametrize("raw, status, body", BAD_REQUESTS)
def test_bad_requests_answered_in_json(gateway, raw, status, body):
    with connect(gateway) as sock:
        sock.sendall(raw)
        got_status, got_body, head = read_answer(sock)
    assert (got_status, got_body) == (status, body)
    assert b"Content-Type: application/json" in head


def test_bad_requests_then_reset_many_times(gateway):
    """A client that sends something unparseable and resets at once: the
    answer's write fails, and must not take the process down."""
    for _ in range(30):
        for raw, _, _ in BAD_REQUESTS:
            sock = connect(gateway)
            sock.sendall(raw)
            reset(sock)
        # and resets in the middle of a good request and of a vote
        sock = connect(gateway)
        sock.sendall(b"GET /vote?postId=r&sco")
        reset(sock)
    eventlet.sleep(0.5)
    assert gateway.process.alive, gateway.process.tail()
    assert_serving(gateway)


def test_good_requests_then_reset_leave_no_traceback(gateway):
    """Whole requests (a read, a vote, health), each reset as soon as it is
    sent: the answer's write fails; the process serves on, and the log
    holds no traceback for a client that went away."""
    requests_sent = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /vote-counts?postId=gone HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /vote?postId=gone&score=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    before = gateway.process.log_path.read_text(errors="replace").count("Traceback")
    for _ in range(20):
        for raw in requests_sent:
            sock = connect(gateway)
            sock.sendall(raw)
            reset(sock)
    eventlet.sleep(0.5)
    assert gateway.process.alive, gateway.process.tail()
    assert_serving(gateway)
    log = gateway.process.log_path.read_text(errors="replace")
    assert log.count("Traceback") == before, log[-3000:]


def test_slow_clients_do_not_starve_others(gateway):
    """300 slow clients: half a request line, a trickle of one byte every
    half second, or headers that announce a body that never comes. Others
    are answered meanwhile, and each slow client is cut (408) within the
    configured timeout."""
    slow = []  # (socket, deadline it must be cut by)
    for i in range(300):
        sock = connect(gateway, timeout=HEADER_TIMEOUT + 5)
        if i % 3 == 0:
            sock.sendall(b"GET /vote?postId=slow&sc")
            slow.append((sock, time.monotonic() + HEADER_TIMEOUT))
        else:
            sock.sendall(b"POST /vote HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                         b'{"postId"')
            slow.append((sock, time.monotonic() + BODY_TIMEOUT))
    tricklers = [connect(gateway, timeout=HEADER_TIMEOUT + 5) for _ in range(5)]
    trickle_started = time.monotonic()

    def trickle(sock):
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"x" * 100:
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # cut
            eventlet.sleep(0.5)
    threads = [eventlet.spawn(trickle, sock) for sock in tricklers]

    assert_serving(gateway)

    cut_late = []
    answers = []
    for sock, deadline in slow + [(s, trickle_started + HEADER_TIMEOUT) for s in tricklers]:
        answers.append(read_answer(sock)[:2])
        if time.monotonic() > deadline + SCHEDULING_SLACK:
            cut_late.append(round(time.monotonic() - deadline, 2))
        sock.close()
    for thread in threads:
        thread.wait()
    assert not cut_late, "{} slow clients cut late by {}s".format(len(cut_late), cut_late[:5])
    header_cut = {"error": "REQUEST_TIMEOUT",
                  "message": "request not received within {}s".format(HEADER_TIMEOUT)}
    body_cut = {"error": "REQUEST_TIMEOUT",
                "message": "request not received within {}s".format(BODY_TIMEOUT)}
    expected = [(408, header_cut if i % 3 == 0 else body_cut) for i in range(300)]
    expected += [(408, header_cut)] * len(tricklers)
    assert answers == expected
    assert_serving(gateway)


def test_a_pipelining_client_does_not_starve_others(gateway):
    """One client sends 20,000 requests at once (HTTP/1.1 pipelining) for
    an answer that needs no worker (404). Another client's /health, sent
    once the first answers come, is answered while the flood's answers are
    still coming: the server turns to its other connections between two
    requests of one. (Serving a connection's requests back to back, it
    answered the flood first: about two seconds here.)"""
    flood_count = 20_000
    flood = connect(gateway, timeout=60)
    other = connect(gateway)
    answered = [0]

    def read_flood():
        marker, data = b"HTTP/1.1 404 ", b""
        while answered[0] < flood_count:
            chunk = flood.recv(65536)
            if not chunk:
                break
            data += chunk
            found = data.count(marker)
            answered[0] += found
            # keep what may be the start of a marker split across chunks
            data = data[data.rfind(marker) + len(marker):] if found else data[-len(marker):]
        return answered[0]

    reader = eventlet.spawn(read_flood)
    sender = eventlet.spawn(flood.sendall, b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n"
                            * flood_count)
    wait_until(lambda: answered[0] > 0, 10, "the first answers", interval=0.001)
    other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, body, _ = read_answer(other)
    answered_meanwhile = answered[0]
    assert (status, body) == (200, HEALTH_OK)
    sender.wait()
    assert reader.wait() == flood_count
    flood.close()
    other.close()
    assert answered_meanwhile < flood_count // 2, answered_meanwhile


def hostile_bodies():
    """1 MiB bodies built to cost far more than 1 MiB once parsed."""
    def fill(prefix, item, suffix, sep=b","):
        count = (MIB - len(prefix) - len(suffix)) // (len(item) + len(sep))
        return prefix + sep.join([item] * count) + suffix

    many = "body: has more than 2016 objects and arrays"
    return [
        ("/votes", "application/json", fill(b"[", b'{"":{}}', b"]"), many),
        ("/votes", "application/json", fill(b'{"votes":[', b'{"":{}}', b"]}"), many),
        ("/vote", "application/json", fill(b"[", b'{"":{}}', b"]"), many),
        ("/votes", "application/json", fill(b'{"votes":[', b'"ab"', b"]}"),
         "votes: must be a list of 1 to 1000 votes"),
        ("/vote", "application/x-www-form-urlencoded", fill(b"", b"a", b"", b"&"),
         "body: a form has at most 100 fields"),
    ]


def test_hostile_bodies_cost_bounded_memory(gateway):
    """40 concurrent 1 MiB bodies shaped to blow up when parsed: all
    refused with 400, and the process grows by at most 150 MB."""
    shapes = hostile_bodies()
    before = gateway.process.memory_kb("VmRSS")

    def send(i):
        path, content_type, body, _ = shapes[i % len(shapes)]
        return gateway.post(path, data=body, timeout=60,
                            headers={"Content-Type": content_type})
    pool = eventlet.GreenPool(40)
    responses = list(pool.imap(send, range(40)))
    peak = gateway.process.memory_kb("VmHWM")
    growth_mb = (peak - before) / 1024
    print("\nRSS before {:.1f} MB, peak {:.1f} MB, growth {:.1f} MB".format(
        before / 1024, peak / 1024, growth_mb))
    assert growth_mb <= 150
    got = [(r.status_code, r.json()) for r in responses]
    expected = [(400, {"error": "VALIDATION_ERROR", "message": shapes[i % len(shapes)][3]})
                for i in range(40)]
    assert got == expected
    assert_serving(gateway)


def queued_votes(amqp_uri):
    """Every vote in the gateway's votes queue (taken off it)."""
    votes = []
    with Connection(amqp_uri) as connection:
        channel = connection.default_channel
        try:
            while (message := channel.basic_get(VOTES_QUEUE, no_ack=True)) is not None:
                votes.extend(json.loads(message.body)["votes"])
        except amqp.exceptions.NotFound:  # not declared: nothing published yet
            pass
    return votes


def test_head_does_not_vote(gateway, module_vhost):
    queued_votes(module_vhost[1])
    with connect(gateway) as sock:
        sock.sendall(b"HEAD /vote?postId=head&score=1 HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        status, body, head = read_answer(sock)
    assert (status, body) == (405, None)  # a HEAD answer has no body
    assert b"\r\nAllow: GET, POST\r\n" in head
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert queued_votes(module_vhost[1]) == []


@pytest.mark.parametrize("path, body, message", [
    ("/vote", b'{"postId": "a", "score": 1, "postId": "b"}',
     'body: key "postId" is given more than once'),
    ("/votes", b'{"votes": [{"postId": "a", "score": 1}], "votes": []}',
     'body: key "votes" is given more than once'),
])
def test_duplicate_json_keys_refused(gateway, path, body, message):
    response = gateway.post(path, data=body, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (
        400, {"error": "VALIDATION_ERROR", "message": message})


def test_control_characters_escaped_in_the_log(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"GET /\x1b[31mred\x07 HTTP/1.1\r\nHost: x\r\n"
                     b"X-Forwarded-For: \x1b]0;pwned\x07\r\nConnection: close\r\n\r\n")
        status, _, _ = read_answer(sock)
    with connect(gateway) as sock:
        sock.sendall(b"GET /\x1b\x07 HTTP/1.1 extra\r\n\r\n")
        bad_status, _, _ = read_answer(sock)
    # control characters in a request line: 400 (RFC 9112), logged escaped
    assert (status, bad_status) == (400, 400)
    log = log_with(gateway, b"GET /\\x1b[31mred")
    assert b"\x1b" not in log and b"\x07" not in log
    assert b"GET /\\x1b[31mred\\x07 HTTP/1.1" in log
    # X-Forwarded-For from a peer that is not a trusted proxy names no one
    assert b"pwned" not in log


@pytest.mark.parametrize("module, port_key", [
    ("services.gateway.service", "WEB_SERVER_ADDRESS"),
    ("services.votes.service", "METRICS_ADDRESS"),
])
def test_out_of_file_descriptors(tmp_path, rabbit_config, redis_uri, module, port_key):
    """Under ``ulimit -n 256``, 400 idle connections: accept fails with
    EMFILE; the process waits, counts and logs it, and serves afterwards."""
    edge = start_service(tmp_path, rabbit_config["AMQP_URI"], redis_uri,
                         module=module, nofile=256, port_key=port_key,
                         name=module.split(".")[1])
    try:
        def open_idle(_):
            try:
                return socket.create_connection(edge.address, timeout=1)
            except OSError:
                return None
        pool = eventlet.GreenPool(400)
        idle = [sock for sock in pool.imap(open_idle, range(400)) if sock is not None]
        eventlet.sleep(1)
        for sock in idle:
            sock.close()
        assert edge.process.alive, edge.process.tail()
        wait_until(lambda: _answers(edge), 10, "the service to answer again")
        health = edge.get("/health")
        assert (health.status_code, health.json()) == (200, HEALTH_OK)
        metrics = edge.get("/metrics").text
        label = "gateway" if port_key == "WEB_SERVER_ADDRESS" else "votes-metrics"
        assert 'http_accept_errors_total{error="EMFILE",server="%s"}' % label in metrics
        log = edge.process.log_path.read_text(errors="replace")
        assert 1 <= log.count("accept failed") <= 2  # once per 10 s
        if port_key == "WEB_SERVER_ADDRESS":
            assert_serving(edge)
    finally:
        edge.process.kill()


def _answers(edge):
    try:
        return edge.get("/health", timeout=1).status_code == 200
    except OSError:
        return False


def test_sigterm_under_load_answers_what_it_read(tmp_path, rabbit_config):
    """SIGTERM to the gateway while 30 keep-alive clients vote: it exits
    within 10 s, and the votes counted are exactly those answered 202
    (none counted that its client did not see accepted)."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    cluster = Cluster(tmp_path, rabbit_config["AMQP_URI"], rabbit_config["vhost"],
                      redis_server)
    try:
        gateway = cluster.start_gateway()
        cluster.start_votes()
        answers = []
        stop = []

        def client(n):
            session = requests.Session()
            i = 0
            while not stop:
                post, score = "p{}".format((n + i) % 7), 1 if i % 3 else -1
                i += 1
                try:
                    response = session.get(cluster.base_url + "/vote", timeout=15,
                                           params={"postId": post, "score": score})
                    answers.append(Vote(post, score, response.status_code))
                except requests.RequestException:
                    answers.append(Vote(post, score, None))
                    eventlet.sleep(0.05)
        threads = [eventlet.spawn(client, n) for n in range(30)]
        wait_until(lambda: len(answers) >= 1500, 30, "1500 votes answered")
        signalled = time.monotonic()
        gateway.signal(signal.SIGTERM)
        code = gateway.wait_exit(SIGTERM_BOUND)
        took = time.monotonic() - signalled
        stop.append(True)
        for thread in threads:
            thread.wait()
        accepted = [a for a in answers if a.status == 202]
        statuses = Counter(a.status for a in answers)
        print("\nSIGTERM under load: answers {}, exit {} after {:.2f}s".format(
            dict(statuses), code, took))
        assert code == 0, gateway.tail()
        assert took < SIGTERM_BOUND
        assert set(statuses) <= {202, None}
        expected = tally(accepted)
        counted = settle(cluster, expected)
        assert counted == expected
    finally:
        cluster.close(show_logs=False)
        redis_server.kill()
