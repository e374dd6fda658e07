"""Many GET /stream clients in one process of their own, for the streams
phase: eventlet green sockets reading ``text/event-stream`` by hand, so
that a thousand connections cost the bench little CPU.

``python -m bench.streams_client SPEC``, SPEC a JSON file::

    {"host", "port", "paths": [one request path per stream],
     "watch": [post ids], "out": where to write the results,
     "concurrency": connections opened at once}

It opens every stream and waits for its ``snapshot``, then prints
``ready <streams with a snapshot> <failed> <seconds>``. Then it reads
commands on stdin, one a line:

* ``count``: prints ``count <counts events> <top events> <bytes>
  <deliveries>``, so far (deliveries: first events of watched posts);
* ``stop``: closes every stream, writes the results to ``out`` and prints
  ``done``.

For each post of ``watch`` it records, per stream following it, when the
first ``counts`` event with ``upvote`` >= 1 arrived (time.perf_counter(),
CLOCK_MONOTONIC on Linux, so comparable with the bench's own clock).
"""
import json
import os
import sys
import time

import eventlet
from eventlet import hubs

STATUS_LINE_LIMIT = 16384


class Streams:

    def __init__(self, spec):
        self.host = spec["host"]
        self.port = spec["port"]
        self.paths = spec["paths"]
        self.watch = frozenset(spec["watch"])
        self.concurrency = spec.get("concurrency", 50)
        self.first = {}     # watched post -> [arrival of its first counts, per stream]
        self.events = {"snapshot": 0, "counts": 0, "top": 0, "keep-alive": 0}
        self.bytes = 0
        self.errors = {}
        self.ended = 0      # streams the server closed
        self.ready = 0
        self.socks = []
        self.threads = []
        self.snapshots = eventlet.Queue()

    def error(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def open(self, path):
        """Connect and send the request; the socket, or None."""
        try:
            sock = eventlet.connect((self.host, self.port))
            sock.sendall("GET {} HTTP/1.1\r\nHost: {}:{}\r\n\r\n".format(
                path, self.host, self.port).encode())
        except OSError as exc:
            self.error(type(exc).__name__)
            self.snapshots.put(False)
            return None
        self.socks.append(sock)
        return sock

    def read(self, sock):
        """Read one stream to its end: the head, then chunks of events."""
        seen = set()
        data = b""
        snapshot = False
        try:
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more or len(data) > STATUS_LINE_LIMIT:
                    raise EOFError("no head")
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            status = head.split(b" ", 2)[1]
            if status != b"200":
                raise EOFError("status " + status.decode())
            chunked = b"transfer-encoding: chunked" in head.lower()
            text = b""
            while True:
                if chunked:
                    while True:
                        end = data.find(b"\r\n")
                        if end < 0:
                            break
                        size = int(data[:end].split(b";")[0], 16)
                        if size == 0:
                            raise EOFError("ended")
                        if len(data) < end + 2 + size + 2:
                            break
                        text += data[end + 2:end + 2 + size]
                        data = data[end + 2 + size + 2:]
                else:
                    text, data = text + data, b""
                while b"\n\n" in text:
                    block, text = text.split(b"\n\n", 1)
                    kind = self.event(block, seen)
                    if kind == "snapshot" and not snapshot:
                        snapshot = True
                        self.snapshots.put(True)
                more = sock.recv(65536)
                if not more:
                    raise EOFError("ended")
                self.bytes += len(more)
                data += more
        except (OSError, EOFError, ValueError, IndexError) as exc:
            if not snapshot:
                self.error(str(exc) if isinstance(exc, EOFError) else type(exc).__name__)
                self.snapshots.put(False)
            else:
                self.ended += 1

    def event(self, block, seen):
        now = time.perf_counter()
        if block.startswith(b":"):
            self.events["keep-alive"] += 1
            return "keep-alive"
        kind = data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        self.events[kind] = self.events.get(kind, 0) + 1
        if kind == "counts":
            counts = json.loads(data)
            post = counts["postId"]
            if post in self.watch and post not in seen and counts["upvote"] >= 1:
                seen.add(post)
                self.first.setdefault(post, []).append(now)
        return kind

    def run_one(self, path):
        sock = self.open(path)
        if sock is not None:
            self.read(sock)

    def connect_all(self):
        """Open every stream, ``concurrency`` at a time waiting for their
        snapshots; returns (with a snapshot, failed, seconds)."""
        start = time.perf_counter()
        ok = failed = 0
        pending = 0
        for path in self.paths:
            if pending >= self.concurrency:
                if self.snapshots.get():
                    ok += 1
                else:
                    failed += 1
                pending -= 1
            self.threads.append(eventlet.spawn(self.run_one, path))
            pending += 1
        for _ in range(pending):
            if self.snapshots.get():
                ok += 1
            else:
                failed += 1
        return ok, failed, time.perf_counter() - start

    def stop(self):
        for thread in self.threads:
            thread.kill()
        for sock in self.socks:
            try:
                sock.close()
            except OSError:
                pass

    def results(self):
        return {"first": self.first, "events": self.events, "bytes": self.bytes,
                "errors": self.errors, "ended": self.ended}


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def commands():
    """Lines from stdin, read without blocking the hub."""
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        hubs.trampoline(fd, read=True)
        more = os.read(fd, 4096)
        if not more:
            yield "stop"
            return
        buffer += more
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()


def main(spec_path):
    with open(spec_path) as handle:
        spec = json.load(handle)
    streams = Streams(spec)
    ok, failed, seconds = streams.connect_all()
    say("ready {} {} {:.3f}".format(ok, failed, seconds))
    for command in commands():
        if command == "count":
            say("count {} {} {} {}".format(
                streams.events["counts"], streams.events["top"], streams.bytes,
                sum(len(times) for times in streams.first.values())))
        elif command == "stop":
            break
    streams.stop()
    with open(spec["out"], "w") as handle:
        json.dump(streams.results(), handle)
    say("done")


if __name__ == "__main__":
    main(sys.argv[1])
