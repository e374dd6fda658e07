"""One client connection: eventlet's ``HttpProtocol`` (as nameko uses it)
with deadlines on the request head and body, RFC 9112's rules on the
head, the body read before any worker runs, JSON refusals, and writes that
survive a vanished client (see services.platform.http)."""
import io
import json
import re
import socket
import time

import eventlet
from eventlet import wsgi
from nameko.web.server import HttpOnlyProtocol
from prometheus_client import Counter

from services.platform.http.access_log import escape_controls
from services.platform.proxies import client_address

LARGE_BODY_BYTES = 64 * 1024     # a body over this takes a large-body slot
LINGER_SECONDS = 2.0             # reading what a refused client still sends

ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    431: "HEADERS_TOO_LARGE",
    503: "SERVER_BUSY",
}

# request line and header lines (RFC 9112 sections 3 and 5, RFC 9110 5.5):
# http.server and email take far more (whitespace before the colon, a line
# with no colon ends the headers, obs-fold, any separator between the words
# of the request line), and what they take differently from a proxy in
# front is request smuggling
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/1\.[01]\r?\n")
# a field value: no NUL, CR, LF, VT or FF (the bytes parsers split lines at)
FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[^\x00\n\r\x0b\x0c]*\r?\n")
FIELD_NAME_THEN_SPACE = re.compile(_TOKEN + rb"[ \t]+:")
END_OF_HEAD = (b"\r\n", b"\n")
MAX_LENGTH_DIGITS = 20           # longer Content-Length: 400, not a bignum

# set by a response that streams until the client leaves: the drain cuts
# it at once instead of waiting for its end
STREAMING_ENVIRON_KEY = "edge.streaming"
# set by EdgeWebServer.open_stream: the monotonic time the stream ends at;
# the stream's slot is given back when its answer ends
STREAM_ENDS_ENVIRON_KEY = "edge.stream_ends"

# connection phases, for the drain
IDLE, READING, BUSY = "idle", "reading", "busy"

connections_cut = Counter(
    "http_connections_cut_total",
    "Connections closed by the server before a request was answered, by "
    "reason (header_timeout, idle_timeout, body_timeout, drain).",
    ["server", "reason"])
requests_refused = Counter(
    "http_requests_refused_total",
    "Requests the server refused before any worker ran, by status.",
    ["server", "status"])


class DeadlinePassed(Exception):
    """Raised in a connection by its header or body deadline."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class _HeadersTooLarge(Exception):
    pass


class _HeaderBudget:
    """Reads the header lines with one byte budget for all of them (eventlet
    allows 8 KiB a line and 64 KiB in all, and answers a plain-text 400)."""

    def __init__(self, fp, budget):
        self.fp = fp
        self.left = budget
        self.lines = []  # as read, for EdgeProtocol._check_head

    def readline(self, size=-1):
        if self.left <= 0:
            raise _HeadersTooLarge()
        limit = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        line = self.fp.readline(limit)
        self.left -= len(line)
        if self.left < 0:
            raise _HeadersTooLarge()
        self.lines.append(line)
        return line


class EdgeProtocol(HttpOnlyProtocol):
    """eventlet's ``HttpProtocol`` (as nameko uses it) with deadlines, a
    body read before the application runs, JSON error answers, and writes
    that survive a vanished client. Upstream reads a request line and
    headers for as long as the client cares to trickle them, answers
    parse errors in plain text (``send_error`` raising when the client has
    reset), and leaves the body to the application."""

    error_codes = ERROR_CODES

    def setup(self):
        super().setup()
        self.edge = self.server.edge
        self.limits = self.edge.limits
        self.phase = IDLE
        self.served = 0
        self.deadline_at = None  # monotonic time, while a read is bounded
        self.deadline_reason = None
        self.edge.track(self)

    # -- reading a request ------------------------------------------------

    def _start_deadline(self, seconds, reason):
        # enforced by the server's reaper (EdgeWebServer._reap): a timer per
        # request would cost every request a heap push and a cancel
        self.deadline_reason = reason
        self.deadline_at = time.monotonic() + seconds

    def _cancel_deadline(self):
        self.deadline_at = None

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except DeadlinePassed as exc:
            # 408 to a client that sent part of a request; silence otherwise
            self._cut(exc.reason, answer=self.phase == READING)
        finally:
            self._cancel_deadline()
            self.phase = IDLE

    def _read_request_line(self):
        if self.edge.draining or self.rfile.closed:
            self.close_connection = 1
            return b""
        self.phase = IDLE
        try:
            if self.served == 0:
                # a new connection: the whole request head within the deadline
                self._start_deadline(self.limits.header_timeout, "header_timeout")
                if not self.rfile.peek(1):
                    return b""
            else:
                # let the other connections run: a client that pipelines,
                # or answers at once, would otherwise be served
                # request after request while they wait
                eventlet.sleep(0)
                self._start_deadline(self.limits.idle_timeout, "idle_timeout")
                if not self.rfile.peek(1):
                    return b""
                self._start_deadline(self.limits.header_timeout, "header_timeout")
        except OSError:
            return b""
        self.phase = READING
        self.served += 1
        line = super()._read_request_line()
        if len(line) >= self.server.url_length_limit:
            # read the rest of the line (bounded) so the client, still
            # sending, is not reset before it reads the answer
            for _ in range(128):
                if self.rfile.readline(self.server.url_length_limit).endswith(b"\n"):
                    break
            self.send_error(414, "request line is longer than {} bytes".format(
                self.server.url_length_limit))
            return b""  # eventlet then closes the connection
        return line

    def parse_request(self):
        # eventlet has wrapped rfile to cap the header size; cap it our way
        self.rfile = _HeaderBudget(getattr(self.rfile, "fp", self.rfile),
                                   self.limits.max_header_bytes)
        try:
            if not super().parse_request():
                return False
        except _HeadersTooLarge:
            self.send_error(431, "request headers are larger than {} bytes".format(
                self.limits.max_header_bytes))
            return False
        finally:
            self._cancel_deadline()
        refused = self._check_head(self.rfile.lines)
        if refused is not None:
            self.send_error(400, refused)
            return False
        return self._check_framing()

    def _check_head(self, lines):
        """What is wrong with the request line or the header lines as
        RFC 9112 has them, or None. Each line that passes is one the
        ``email`` parser underneath reads as the same single field."""
        if REQUEST_LINE.fullmatch(self.raw_requestline) is None:
            return "malformed request line"
        if not lines or lines[-1] not in END_OF_HEAD:
            return "the request head ends before its empty line"
        for line in lines[:-1]:
            if FIELD_LINE.fullmatch(line) is None:
                if line[:1] in (b" ", b"\t"):
                    return "a header line starts with whitespace (obsolete line folding)"
                if FIELD_NAME_THEN_SPACE.match(line):
                    return "whitespace between a header field name and its colon"
                return "malformed header line"
        hosts = len(self.headers.get_all("Host") or ())
        if hosts > 1 or (hosts == 0 and self.request_version == "HTTP/1.1"):
            return "an HTTP/1.1 request needs one Host header"
        return None

    def _check_framing(self):
        """The body's size is known and within the limit before it is read:
        one Content-Length, no Transfer-Encoding."""
        # email strips the whitespace before a value, not after it
        lengths = [value.rstrip(" \t") for value in self.headers.get_all("Content-Length") or ()]
        if self.headers.get("Transfer-Encoding") is not None:
            if lengths:  # which one frames the body is what smuggling plays on
                self.send_error(400, "Transfer-Encoding and Content-Length together")
            else:
                self.send_error(411, "a request body needs a Content-Length")
            return False
        if len(lengths) > 1:
            self.send_error(400, "Content-Length is given more than once")
            return False
        if lengths and not (lengths[0].isascii() and lengths[0].isdigit()
                            and len(lengths[0]) <= MAX_LENGTH_DIGITS):
            self.send_error(400, "Content-Length must be one decimal number "
                            "of at most {} digits".format(MAX_LENGTH_DIGITS))
            return False
        if lengths and int(lengths[0]) > self.limits.max_body_bytes:
            self.send_error(413, "request body is larger than {} bytes".format(
                self.limits.max_body_bytes))
            return False
        return True

    def handle_one_response(self):
        length = int(self.headers.get("Content-Length") or 0)
        slot = None
        if length > LARGE_BODY_BYTES:
            slot = self.edge.large_bodies
            if not slot.acquire(timeout=self.limits.body_timeout):
                slot = None
                self.send_error(503, "too many large requests at once; retry",
                                retry_after=True)
                return
        try:
            if length:
                self._start_deadline(self.limits.body_timeout, "body_timeout")
                body = self.environ["eventlet.input"].read(length)
                self._cancel_deadline()
                if len(body) < length:  # the client gave up
                    self.close_connection = 1
                    return
                self.environ["wsgi.input"] = io.BytesIO(body)
                self.environ["edge.body"] = body
            self.phase = BUSY
            if self.edge.draining:
                self.close_connection = 1
            super().handle_one_response()
        except DeadlinePassed as exc:
            self._cut(exc.reason, answer=True)
        finally:
            self._cancel_deadline()
            if slot is not None:
                slot.release()
            if self.environ.pop(STREAM_ENDS_ENVIRON_KEY, None) is not None:
                self.edge.close_stream()

    # -- answering ----------------------------------------------------------

    def _cut(self, reason, answer):
        """Close a connection whose client was too slow (or idle)."""
        self.close_connection = 1
        connections_cut.labels(self.edge.label, reason).inc()
        if answer:
            self.send_error(408, "request not received within {:g}s".format(
                self.limits.body_timeout if reason == "body_timeout"
                else self.limits.header_timeout), linger=False)

    def send_error(self, code, message=None, explain=None, retry_after=False,
                   linger=True):
        """A JSON answer, then close; a client that has gone is no error."""
        self._cancel_deadline()
        if code >= 500 and code != 503:  # 505 for an unknown HTTP version: bad input all the same
            code = 400
        requests_refused.labels(self.edge.label, str(code)).inc()
        body = json.dumps({
            "error": self.error_codes.get(code, "HTTP_{}".format(code)),
            "message": message or self.responses.get(code, ("error",))[0],
        }).encode()
        self.close_connection = 1
        # the request line may not have been parsed (yet); answer as HTTP/1.0,
        # since an HTTP/0.9 answer would carry no status line
        self.requestline = getattr(self, "requestline", "")[:200]
        self.request_version = "HTTP/1.0"
        head = ["HTTP/1.0 {} {}".format(code, self.responses.get(code, ("",))[0]),
                "Date: " + self.date_time_string(),
                "Content-Type: application/json",
                "Cache-Control: no-store",
                "Connection: close",
                "Content-Length: {}".format(len(body))]
        if retry_after:
            head.append("Retry-After: 1")
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        if getattr(self, "command", None) != "HEAD":
            data += body
        try:
            self.connection.settimeout(LINGER_SECONDS)
            self.wfile.write(data)
            self.wfile.flush()
            if linger:
                self._linger()
        except (OSError, ValueError):
            pass  # the client went away: nothing to answer
        self.server.log.info('%s - - [%s] "%s" %s %s', self.client_address[0],
                             self.log_date_time_string(), self.requestline,
                             code, len(body))

    def _linger(self):
        """Read (and drop) what the client is still sending for a moment,
        so that closing does not reset the connection before it reads the
        answer (what nginx calls lingering close)."""
        self.connection.shutdown(socket.SHUT_WR)
        budget = self.limits.max_body_bytes + LARGE_BODY_BYTES
        with eventlet.Timeout(LINGER_SECONDS, False):
            while budget > 0:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                budget -= len(chunk)

    def get_client_address(self):
        """For the access log: the client as the rate limits see it
        (services.platform.proxies): X-Forwarded-For only from a trusted
        proxy, since any client can write it."""
        host, port = wsgi.addr_to_host_port(self.client_address)
        if self.edge.trusted_proxies:
            host = client_address(self.environ, self.edge.trusted_proxies)
        return escape_controls(host), port

    def log_message(self, format, *args):
        self.server.log.info("%s - - [%s] %s", self.client_address[0],
                             self.log_date_time_string(), format % args)

    def finish(self):
        self._cancel_deadline()
        try:
            super().finish()
        except (OSError, ValueError):
            pass  # flushing to a client that has gone
        finally:
            try:
                self.connection.close()
            except OSError:
                pass

