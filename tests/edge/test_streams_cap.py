"""GET /stream against the real gateway and votes service over real
sockets: streams have a cap of their own (HTTP_MAX_STREAMS, at most half
of HTTP_MAX_CONNECTIONS), past it a 503 in JSON with Retry-After, so that
/health and votes are answered beside any number of streams; and each
stream ends, cleanly, after HTTP_STREAM_LIFETIME."""
import time

import eventlet
import pytest

from harness.process import VOTES
from tests.edge.conftest import EDGE_LIMITS, start_service
from tests.edge.test_hostile_clients import assert_serving, connect

REDIS = "redis://127.0.0.1:6379/15"
MAX_CONNECTIONS = 8      # HTTP_MAX_STREAMS then defaults to 4
LIFETIME = 2             # HTTP_STREAM_LIFETIME of the second gateway
STREAM = b"GET /stream?postId=s1&top=3 HTTP/1.1\r\nHost: x\r\n\r\n"


def refused_body(most):
    return (b'{"error":"TOO_MANY_STREAMS","message":"this server holds %d streams, '
            b'its most; retry later"}' % most)


@pytest.fixture(scope="module")
def votes(module_vhost, tmp_path_factory):
    edge = start_service(tmp_path_factory.mktemp("votes"), module_vhost[1], REDIS,
                         module=VOTES, name="votes", port_key="METRICS_ADDRESS")
    yield edge
    edge.process.kill()


@pytest.fixture(scope="module")
def small_gateway(votes, module_vhost, tmp_path_factory):
    edge = start_service(tmp_path_factory.mktemp("small"), module_vhost[1], REDIS,
                         limits=dict(EDGE_LIMITS, HTTP_MAX_CONNECTIONS=MAX_CONNECTIONS))
    yield edge
    edge.process.kill()


@pytest.fixture(scope="module")
def short_streams(votes, module_vhost, tmp_path_factory):
    edge = start_service(tmp_path_factory.mktemp("short"), module_vhost[1], REDIS,
                         limits=dict(EDGE_LIMITS, HTTP_STREAM_LIFETIME=LIFETIME,
                                     HTTP_MAX_STREAMS=1))
    yield edge
    edge.process.kill()


class Answer:
    """What one stream request got: its status line, headers and what
    followed them so far, on a socket kept open."""

    def __init__(self, sock):
        self.sock = sock
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed before an answer: {!r}".format(data)
            data += chunk
        self.head, _, self.rest = data.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ", 2)[1])

    def read_until(self, marker):
        while marker not in self.rest:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.rest)
            self.rest += chunk
        return self.rest

    def read_to_eof(self):
        while chunk := self.sock.recv(65536):
            self.rest += chunk
        return self.rest


def open_stream(edge):
    sock = connect(edge, timeout=15)
    sock.sendall(STREAM)
    return Answer(sock)


def assert_refused(answer, most=1):
    """The exact 503; then the server closes the connection."""
    assert answer.status == 503, answer.head
    head = answer.head + b"\r\n"
    assert b"\r\nRetry-After: 5\r\n" in head
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nConnection: close\r\n" in head
    assert answer.read_to_eof() == refused_body(most)


def test_streams_never_take_every_connection(small_gateway):
    """As many stream requests as HTTP_MAX_CONNECTIONS: half are streams,
    the rest refused; then a flood of stream requests at once, beside which
    /health and a vote are answered within a second."""
    answers = []
    try:
        for _ in range(MAX_CONNECTIONS):
            answers.append(open_stream(small_gateway))
        assert [answer.status for answer in answers] == [200] * 4 + [503] * 4
        for answer in answers[:4]:
            assert b"event: snapshot" in answer.read_until(b"event: snapshot")
        for answer in answers[4:]:
            assert_refused(answer, most=4)
        assert_serving(small_gateway)

        flood = eventlet.GreenPool(50)
        refused = [flood.spawn(open_stream, small_gateway) for _ in range(50)]
        assert_serving(small_gateway)
        for thread in refused:
            assert_refused(thread.wait(), most=4)
    finally:
        for answer in answers:
            answer.sock.close()


def test_a_stream_ends_cleanly_after_its_lifetime(short_streams):
    """HTTP_STREAM_LIFETIME 2: the stream ends with the last chunk of its
    chunked body, no sooner than 90% of it (the spread), and its
    connection serves on; its slot is free again (HTTP_MAX_STREAMS 1)."""
    for _ in range(3):  # a stream request answered otherwise gives its slot back
        refused = short_streams.get("/stream")
        assert (refused.status_code, refused.json()["error"]) == (400, "VALIDATION_ERROR")
    started = time.monotonic()
    stream = open_stream(short_streams)
    assert stream.status == 200
    assert b"retry: 2000" in stream.read_until(b"event: snapshot")
    assert_refused(open_stream(short_streams))  # its slot is taken
    assert stream.read_until(b"\r\n0\r\n\r\n").endswith(b"\r\n0\r\n\r\n")
    assert time.monotonic() - started >= 0.9 * LIFETIME
    stream.sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    stream.rest = b""
    health = stream.read_to_eof()
    assert health.startswith(b"HTTP/1.1 200 OK\r\n")
    assert health.endswith(b'{"status":"ok","version":"1.0.0"}')
    again = open_stream(short_streams)
    assert again.status == 200
    again.sock.close()
    stream.sock.close()
