"""Request heads over real sockets against the real gateway: a head that
parsers can read two ways is refused (RFC 9112) before anything runs, so a
request hidden in it never runs; and the access log names the client as
the rate limits do, never by a header any client can write."""
import uuid

import pytest

from tests.edge.conftest import log_with, start_service
from tests.edge.test_hostile_clients import assert_serving, connect, queued_votes


def read_all(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


SMUGGLED = b"GET /vote?postId=smuggled&score=1 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("head, message", [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length : 40\r\n\r\n",
     "whitespace between a header field name and its colon"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: 40\r\n\r\n",
     "a header line starts with whitespace (obsolete line folding)"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
     "Content-Length is given more than once"),
    (b"POST /vote HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Length: 40\r\n\r\n", "Transfer-Encoding and Content-Length together"),
])
def test_a_smuggled_request_never_runs(gateway, module_vhost, head, message):
    """The head, then a vote of its own: one 400, in JSON, then the
    connection closed; the vote is never read as a request."""
    queued_votes(module_vhost[1])  # an empty queue to start from
    with connect(gateway) as sock:
        sock.sendall(head + SMUGGLED)
        answer = read_all(sock)
    head_out, _, body = answer.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert body == ('{"error": "BAD_REQUEST", "message": "%s"}' % message).encode()
    assert head_out.endswith(b"\r\nContent-Length: %d" % len(body))  # one answer alone
    assert b"\r\nConnection: close\r\n" in head_out
    assert_serving(gateway)  # a vote of its own, queued after any smuggled one
    assert [vote["postId"] for vote in queued_votes(module_vhost[1])] == ["edge"]


def test_a_huge_content_length_is_answered_without_traceback(gateway):
    before = gateway.process.log_path.read_text(errors="replace").count("Traceback")
    with connect(gateway) as sock:
        sock.sendall(b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + b"1" * 5000 + b"\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert answer.endswith(b'{"error": "BAD_REQUEST", "message": '
                           b'"Content-Length must be one decimal number of at most 20 digits"}')
    assert_serving(gateway)
    log = gateway.process.log_path.read_text(errors="replace")
    assert log.count("Traceback") == before, log[-3000:]


def forwarded_access_line(edge, forwarded):
    """The access log line of a request carrying ``X-Forwarded-For``."""
    path = "/nothing-{}".format(uuid.uuid4().hex)
    response = edge.get(path, headers={"X-Forwarded-For": forwarded})
    assert response.status_code == 404
    log = log_with(edge, path.encode())
    return next(line for line in log.decode().splitlines() if path in line)


def test_an_untrusted_forwarded_for_is_not_the_client(gateway):
    """TRUSTED_PROXIES empty (the default): the peer is the client."""
    line = forwarded_access_line(gateway, "203.0.113.9")
    assert " nameko.web.server 127.0.0.1 - - [" in line
    assert "203.0.113.9" not in line


@pytest.fixture(scope="module")
def behind_proxy(module_vhost, tmp_path_factory):
    """A gateway whose peer, 127.0.0.1, is a trusted proxy."""
    edge = start_service(tmp_path_factory.mktemp("proxied"), module_vhost[1],
                         "redis://127.0.0.1:6379/15", name="proxied",
                         limits={"TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    yield edge
    edge.process.kill()


@pytest.mark.parametrize("forwarded, client", [
    # the nearest entry that is not a trusted proxy, as the rate limits take it
    ("198.51.100.7, 203.0.113.9", "203.0.113.9"),
    ("203.0.113.9, 10.1.2.3", "203.0.113.9"),
    # an entry that is no address ends the walk: the last trusted hop
    ("\x1b]0;pwned\x07", "127.0.0.1"),
])
def test_a_trusted_proxy_names_the_client(behind_proxy, forwarded, client):
    line = forwarded_access_line(behind_proxy, forwarded)
    assert " nameko.web.server {} - - [".format(client) in line
    assert "pwned" not in line
