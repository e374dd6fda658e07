"""The edge's request head parsing checked against h11, a well-kept
HTTP/1.1 parser, on generated request heads (valid ones and the forms
that smuggling plays on): both must accept or refuse the same heads, and
read the same method, target, Host and Content-Length from those they
accept.

The edge side is the real EdgeProtocol on a real TCP connection
(eventlet's wsgi server, as the services run it) with a recording WSGI
application in place of nameko's: a head is accepted when the
application ran.

Where the edge is deliberately stricter than h11, ``deliberate_refusal``
says so, case by case, with the status the edge answers instead; every
other head must get the same verdict from both.
"""
import json
import socket

import eventlet
import h11
import pytest
from eventlet import wsgi
from eventlet.semaphore import Semaphore
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from services.platform.http.limits import Limits
from services.platform.http.server import EdgeWebServer

LIMITS = Limits.from_config({})
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# bytes parsers disagree on: NUL, CR, VT, FF, C0/C1 controls, DEL, NEL, obs-text
ODD = "\x00\r\x0b\x0c\x1c\x01\x1b\x7f\x85\xa0\xff\t :"
PADDING = b"x" * 64  # after a head both should refuse: a body a laxer parser would read


class Recorder:
    """The WSGI application: what the edge read from each head it accepted."""

    def __init__(self):
        self.seen = []

    def __call__(self, environ, start_response):
        self.seen.append({
            "method": environ["REQUEST_METHOD"].encode("latin-1"),
            "target": (environ["RAW_PATH_INFO"] + (
                "?" + environ["QUERY_STRING"] if "QUERY_STRING" in environ else "")
            ).encode("latin-1"),
            "host": environ.get("HTTP_HOST", "").encode("latin-1")
            if "HTTP_HOST" in environ else None,
            "length": int(environ["CONTENT_LENGTH"]) if "CONTENT_LENGTH" in environ else None,
        })
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]


class EdgeOnSocket:
    """EdgeProtocol serving one connection at a time from a listening socket."""

    def __init__(self):
        self.app = Recorder()
        self.edge = EdgeWebServer()
        self.edge.limits = LIMITS
        self.edge.large_bodies = Semaphore(LIMITS.max_large_bodies)
        self.listener = eventlet.listen(("127.0.0.1", 0))
        self.server = self.edge.get_wsgi_server(self.listener, self.app)

    def send(self, data):
        """(whether the application ran with what it read, the raw answer)."""
        self.app.seen.clear()
        self.edge._connections.clear()
        client = socket.create_connection(self.listener.getsockname(), timeout=5)
        conn, address = self.listener.accept()
        served = eventlet.spawn(self.server.process_request,
                                [address, conn, wsgi.STATE_IDLE])
        try:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)  # the server reads all, then EOF
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            served.wait()
        finally:
            client.close()
            conn.close()
        return list(self.app.seen), answer


@pytest.fixture(scope="module")
def edge():
    server = EdgeOnSocket()
    yield server
    server.listener.close()


def h11_reads(data):
    """h11's Request for the head at the start of ``data``, or None when it
    refuses it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event  # every head here is whole
    return event


def deliberate_refusal(request, field_lines):
    """The status the edge answers, where it refuses on purpose a head h11
    takes; None where it must take it as h11 does."""
    # obs-fold: RFC 9112 5.2 lets a server refuse it (h11 joins the lines)
    if any(line[:1] in (b" ", b"\t") for line in field_lines):
        return 400
    # only HTTP/1.0 and HTTP/1.1 are spoken (h11 takes HTTP/1.2, HTTP/2.0)
    if request.http_version not in (b"1.0", b"1.1"):
        return 400
    fields = [line.split(b":", 1) for line in field_lines]
    lengths = [value.strip(b" \t") for name, value in fields
               if name.lower() == b"content-length"]
    # no chunked bodies: 411 alone, 400 beside a Content-Length (h11 lets
    # Transfer-Encoding win, the framing a smuggler picks to differ on)
    if any(name.lower() == b"transfer-encoding" for name, _ in fields):
        return 400 if lengths else 411
    # one Content-Length: h11 takes repeats of one value ("5, 5" or two lines)
    if len(lengths) > 1 or any(b"," in length for length in lengths):
        return 400
    # the body limit (HTTP_MAX_BODY_BYTES)
    if lengths and int(lengths[0]) > LIMITS.max_body_bytes:
        return 413
    return None


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


# -- generated request heads ----------------------------------------------

REQUEST_LINES = st.sampled_from([
    b"GET /health HTTP/1.1", b"POST /votes?x=1 HTTP/1.1", b"GET / HTTP/1.0",
    b"OPTIONS * HTTP/1.1", b"GET http://h/x HTTP/1.1",
])
BAD_REQUEST_LINES = st.sampled_from([  # malformed, or versions the edge does not speak
    b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b"GET\t/ HTTP/1.1", b"GET /\x1b HTTP/1.1",
    b"GET /\xff HTTP/1.1", b"GET / http/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0",
    b"GET /", b"G(T / HTTP/1.1", b" GET / HTTP/1.1",
])
NAMES = st.sampled_from(["X-Forwarded-For", "Accept", "X-A", "User-Agent", "host"]) | st.text(
    TCHARS, min_size=1, max_size=6).filter(
    lambda name: name.lower() not in ("expect", "connection", "upgrade"))
VALUES = st.sampled_from(["x", "example.org", "a b", "a\tb", "", "\xa0\xff", "1, 2"])
FRAMING_NAMES = st.sampled_from(
    ["Content-Length", "content-length", "Transfer-Encoding", "Content_Length"])
FRAMING_VALUES = st.sampled_from([
    "0", "5", "05", "64", " 5 ", "5, 5", "5,6", "-1", "+5", "0x10", "", "5 5",
    "1" * 20, "1" * 21, "9" * 5000, "chunked", "gzip", "chunked, gzip", "identity",
])
ODD_VALUES = st.text(st.sampled_from("ab5 " + ODD), min_size=1, max_size=6)
OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def field_lines(draw):
    kind = draw(st.sampled_from(["plain"] * 8 + ["framing"] * 4 + [
        "odd_value", "space_before_colon", "fold", "no_colon", "odd_name"]))
    name, value = draw(NAMES), draw(VALUES)
    if kind == "framing":
        name, value = draw(FRAMING_NAMES), draw(FRAMING_VALUES)
    if kind == "odd_value":
        value = draw(ODD_VALUES)
    if kind in ("plain", "framing", "odd_value"):
        line = "{}:{}{}{}".format(name, draw(OWS), value, draw(OWS))
    elif kind == "space_before_colon":
        name = draw(NAMES | FRAMING_NAMES)
        line = "{}{}:{}".format(name, draw(st.sampled_from([" ", "\t", "  "])), value)
    elif kind == "fold":
        line = "{}{}".format(draw(st.sampled_from([" ", "\t"])), value or "x")
    elif kind == "no_colon":
        line = name + value
    else:
        odd = draw(st.sampled_from(ODD))
        at = draw(st.integers(0, len(name)))
        line = "{}{}{}:{}".format(name[:at], odd, name[at:], value)
    return line.encode("latin-1") + b"\r\n"


@st.composite
def request_heads(draw):
    lines = draw(st.lists(field_lines(), max_size=5))
    if draw(st.integers(0, 3)) < 3:  # most requests name their host
        lines.insert(draw(st.integers(0, len(lines))), b"Host: example.org\r\n")
    request_line = draw(REQUEST_LINES if draw(st.integers(0, 3)) < 3 else BAD_REQUEST_LINES)
    return request_line + b"\r\n", lines


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(head=request_heads())
def test_edge_and_h11_agree_on_request_heads(edge, head):
    request_line, lines = head
    data = request_line + b"".join(lines) + b"\r\n"
    note(repr(data))
    request = h11_reads(data)
    refusal = None if request is None else deliberate_refusal(
        request, [line[:-2] for line in lines])
    length = None
    if request is not None and refusal is None:
        framing = [value for name, value in request.headers if name == b"content-length"]
        length = int(framing[0]) if framing else None
    seen, answer = edge.send(data + (b"x" * length if length else PADDING))
    status = status_of(answer)
    event("h11 {}, edge {}".format("refuses" if request is None else "accepts", status))
    if request is not None and refusal is None:
        assert (status, seen) == (200, [{
            "method": request.method,
            "target": request.target,
            "host": dict(request.headers).get(b"host"),
            "length": length,
        }]), answer
        return
    # refused: before any application ran, in JSON, and the connection closed
    assert seen == []
    head, _, body = answer.partition(b"\r\n\r\n")
    if refusal is not None:
        assert status == refusal, answer
    else:
        assert status in (400, 411), answer
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nConnection: close\r\n" in head
    assert set(json.loads(body)) == {"error", "message"}


SMUGGLED = [
    # the header is dropped by a lax parser, and its body runs as a second request
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length : 40\r\n\r\n",
     "whitespace between a header field name and its colon"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: 40\r\n\r\n",
     "a header line starts with whitespace (obsolete line folding)"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nbogus\r\nContent-Length: 40\r\n\r\n",
     "malformed header line"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\rContent-Length: 40\r\n\r\n",
     "malformed header line"),
    (b"GET /health HTTP/1.1\r\nContent-Length: 40\r\n\r\n",
     "an HTTP/1.1 request needs one Host header"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
     "an HTTP/1.1 request needs one Host header"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
     "Content-Length is given more than once"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding and Content-Length together"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
     "Content-Length must be one decimal number of at most 20 digits"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
     "Content-Length must be one decimal number of at most 20 digits"),
    (b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request line"),
]


@pytest.mark.parametrize("head, message", SMUGGLED)
def test_ambiguous_heads_refused(edge, head, message):
    """Each form, exactly: one 400 in JSON, no application run, closed."""
    seen, answer = edge.send(head + b"GET /vote?postId=9&score=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert (seen, status_of(answer), json.loads(body)) == (
        [], 400, {"error": "BAD_REQUEST", "message": message})
    assert head.endswith(b"\r\nContent-Length: %d" % len(body))  # and nothing after
