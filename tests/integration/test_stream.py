"""GET /stream: Server-Sent Events over real HTTP, both services in one
runner on real RabbitMQ and Redis."""
import collections
import json
import socket
import time

import eventlet
import pytest

from services.gateway.live import LiveCounts
from services.gateway.service import GatewayService
from services.votes.service import VotesService

UPDATE_TIMEOUT = 10  # seconds: a bound for the test, not a latency check


class Stream:
    """One SSE connection, read by a plain socket: events as dicts."""

    def __init__(self, port, query, headers=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=UPDATE_TIMEOUT)
        head = "GET /stream?{} HTTP/1.1\r\nHost: test\r\n".format(query)
        head += "".join("{}: {}\r\n".format(k, v) for k, v in headers)
        self.sock.sendall(head.encode() + b"\r\n")
        self.buffer = b""
        self.body = b""  # an event not yet whole
        self.events = collections.deque()  # whole, not yet taken
        self.status_line, self.headers = self._head()

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        self.buffer += data

    def _head(self):
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        return lines[0], {k.lower(): v.strip() for k, v in
                          (line.split(":", 1) for line in lines[1:])}

    def _line(self):
        # chunked transfer encoding: chunk sizes come on lines of their own
        while True:
            while b"\r\n" not in self.buffer:
                self._read()
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            return line.decode()

    def event(self):
        """The next event (comments skipped), as {"event", "id", "data", ...};
        a chunk may carry several (the gateway writes together what came
        together)."""
        while not self.events:
            size = int(self._line(), 16)
            if size == 0:
                raise EOFError("stream ended")
            while len(self.buffer) < size + 2:
                self._read()
            self.body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]
            while b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                fields = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        continue
                    name, _, value = line.partition(": ")
                    fields[name] = value
                if "event" in fields:
                    fields["data"] = json.loads(fields["data"])
                    self.events.append(fields)
        return self.events.popleft()

    def close(self):
        self.sock.close()


@pytest.fixture
def services(runner_factory, config):
    config = dict(config, max_workers=4)
    runner = runner_factory(config, GatewayService, VotesService)
    runner.start()
    return runner


@pytest.fixture
def open_stream(services, web_port):
    """Opens streams on the gateway of ``services``, once its feed consumer
    is connected: announcements made before its queue is bound reach no
    one (best effort), and the tests count on every update."""
    container = next(c for c in services.containers if c.service_cls is GatewayService)
    live = next(d for d in container.dependencies if isinstance(d, LiveCounts))
    deadline = time.monotonic() + 30
    while not live.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.connected, "the gateway's feed did not connect"
    streams = []

    def open_(query, headers=()):
        stream = Stream(web_port, query, headers)
        streams.append(stream)
        return stream
    yield open_
    for stream in streams:
        stream.close()


def counts(post, up, down):
    return {"postId": post, "upvote": up, "downvote": down, "score": up - down}


def test_snapshot_then_updates_of_followed_posts(services, web_session, open_stream):
    assert web_session.get("/vote?postId=a&score=1").status_code == 202
    time.sleep(0.5)  # counted
    stream = open_stream("postId=a&postId=b")
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-store"
    snapshot = stream.event()
    assert (snapshot["event"], snapshot["retry"]) == ("snapshot", "2000")
    assert snapshot["data"] == {"posts": [counts("a", 1, 0), counts("b", 0, 0)], "top": []}

    # c is not followed: its votes send nothing to this stream
    for post, score in (("c", 1), ("b", -1), ("c", 1), ("b", -1)):
        assert web_session.get("/vote?postId={}&score={}".format(post, score)).status_code == 202
        time.sleep(0.3)
    seen = {}
    last_id = int(snapshot["id"])
    while seen.get("b") != counts("b", 0, 2):
        event = stream.event()
        assert event["event"] == "counts"
        assert int(event["id"]) > last_id
        last_id = int(event["id"])
        seen[event["data"]["postId"]] = event["data"]
    assert set(seen) <= {"a", "b"}


def test_top_follows_the_leaderboard(services, web_session, open_stream):
    for post, score in (("x", 1), ("y", 1), ("y", 1)):
        assert web_session.get("/vote?postId={}&score={}".format(post, score)).status_code == 202
    time.sleep(0.5)
    stream = open_stream("top=2")
    snapshot = stream.event()
    assert snapshot["data"] == {"posts": [], "top": [counts("y", 2, 0), counts("x", 1, 0)]}
    for _ in range(2):
        assert web_session.get("/vote?postId=z&score=1").status_code == 202
    time.sleep(0.3)
    for _ in range(2):
        assert web_session.get("/vote?postId=z&score=1").status_code == 202
        # a flush between the two: the order changes at z's third vote
        time.sleep(0.3)
    # z overtakes y: a top event when the order changes, and z's later
    # counts as counts events (z is in the top 2). What a page shows is the
    # last top's order with the latest counts of each post; read until that
    # is z 4, y 2 (the socket times out if never)
    order, shown = None, {}
    while (order, shown.get("z"), shown.get("y")) != (
            ["z", "y"], counts("z", 4, 0), counts("y", 2, 0)):
        event = stream.event()
        if event["event"] == "top":
            order = [post["postId"] for post in event["data"]["top"]]
            shown.update((post["postId"], post) for post in event["data"]["top"])
        else:
            shown[event["data"]["postId"]] = event["data"]


def test_reconnect_with_last_event_id_gets_a_fresh_snapshot(services, web_session,
                                                             open_stream):
    first = open_stream("postId=r").event()
    assert web_session.get("/vote?postId=r&score=-1").status_code == 202
    time.sleep(0.5)
    again = open_stream("postId=r", headers=[("Last-Event-ID", first["id"])]).event()
    assert again["event"] == "snapshot"
    assert int(again["id"]) > int(first["id"])
    assert again["data"]["posts"] == [counts("r", 0, 1)]


def test_streams_hold_no_worker(services, web_session, open_stream):
    """max_workers is 4 here: ten open streams, and votes still answer."""
    streams = [open_stream("postId=w") for _ in range(10)]
    for stream in streams:
        assert stream.event()["event"] == "snapshot"
    with eventlet.Timeout(UPDATE_TIMEOUT):
        assert web_session.get("/vote?postId=w&score=1").status_code == 202
    for stream in streams:
        event = stream.event()
        assert (event["event"], event["data"]) == ("counts", counts("w", 1, 0))


def test_the_stream_ends_when_the_gateway_stops(services, open_stream):
    stream = open_stream("postId=s")
    assert stream.event()["event"] == "snapshot"
    started = time.monotonic()
    services.stop()
    with pytest.raises(EOFError):
        stream.event()
    # the stop did not wait for the stream (the drain allows 6 s)
    assert time.monotonic() - started < 6


ERROR = {"error": "VALIDATION_ERROR"}


@pytest.mark.parametrize("query, message", [
    ("", "stream: follow 1 to 100 postId, or top from 1 to 100"),
    ("top=0", "stream: follow 1 to 100 postId, or top from 1 to 100"),
    ("postId=a%20b", "postId: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    ("postId=", "postId: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    ("top=101", "top: must be an integer from 0 to 100"),
    ("top=-1", "top: must be an integer from 0 to 100"),
    ("top=1.0", "top: must be an integer from 0 to 100"),
    ("top=1&top=2", "top: given more than once"),
    ("&".join("postId=p{}".format(i) for i in range(101)), "postId: at most 100 posts"),
])
def test_bad_stream_parameters(services, web_session, query, message):
    response = web_session.get("/stream?" + query)
    assert (response.status_code, response.json()) == (400, dict(ERROR, message=message))
    assert response.headers["Content-Type"] == "application/json"


def test_the_page(services, web_session):
    response = web_session.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"EventSource" in response.content
    # it loads nothing from elsewhere: the only absolute URL is the SVG
    # namespace's name, which is an identifier, never fetched
    page = response.content.replace(b'"http://www.w3.org/2000/svg"', b"")
    assert b"http://" not in page and b"https://" not in page
