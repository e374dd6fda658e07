"""nameko's web server, hardened against what clients send.

nameko's ``WebServer`` accepts in a loop with no cap and no timeouts, runs
every connection in a container managed thread (an error there kills the
whole container), lets the service read request bodies inside its workers,
and on stop simply kills the connections. ``EdgeWebServer`` and
``EdgeProtocol`` change that:

* at most ``HTTP_MAX_CONNECTIONS`` open connections: at the cap the server
  stops accepting (new clients wait in the listen backlog) instead of
  failing; ``accept`` running out of file descriptors or memory is counted,
  logged at most every ACCEPT_LOG_INTERVAL seconds, and retried;
* the request line and headers must arrive within ``HTTP_HEADER_TIMEOUT``
  of the connection (or of the first byte of a later request), whatever
  the pace; a kept-alive connection idle for ``HTTP_IDLE_TIMEOUT`` is
  closed;
* the body is read by the connection, before any worker runs, within
  ``HTTP_BODY_TIMEOUT``; ``Content-Length`` is required and at most
  ``HTTP_MAX_BODY_BYTES``; at most ``HTTP_MAX_LARGE_BODIES`` requests with a
  body over LARGE_BODY_BYTES are read and handled at once;
* the request line and header lines must be as RFC 9112 has them: no
  whitespace before a colon, no obs-fold, one Host in HTTP/1.1, at most one
  Content-Length and no Transfer-Encoding beside it; anything else is 400
  and the connection is closed (a parser laxer than the proxy in front is
  how requests are smuggled);
* streams (routes declared ``stream=True``) have a cap of their own,
  ``HTTP_MAX_STREAMS``, at most half of ``HTTP_MAX_CONNECTIONS``, so that
  the other half is always left to other requests; each ends after
  ``HTTP_STREAM_LIFETIME``;
* every write to a client treats a vanished peer as normal;
* the access log names the client as the rate limits do: the peer, or
  from a TRUSTED_PROXIES peer the address X-Forwarded-For gives;
* request lines and headers reach the log with control characters escaped;
* on stop it drains: no more accepting, idle connections and streams
  closed, every request already read answered with ``Connection: close``,
  the rest cut
  after ``HTTP_DRAIN_TIMEOUT``; all this before the container waits for
  its workers and stops its dependencies (the entrypoints' stop).

Errors the server answers itself are JSON: ``{"error": CODE, "message": ...}``.
"""
import errno
import io
import json
import logging
import random
import re
import resource
import socket
import sys
import time
from dataclasses import dataclass

import eventlet
from eventlet import hubs, wsgi
from eventlet.event import Event
from eventlet.semaphore import Semaphore
from nameko.exceptions import ConfigurationError
from nameko.web.server import HttpOnlyProtocol, WebServer
from prometheus_client import Counter, Gauge

from services.platform.proxies import client_address, trusted_proxies
from services.settings import number

_log = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("nameko.web.server")  # nameko's access log

# config keys and defaults (README "Limits and protections")
LIMITS = (
    # key, attribute, default, minimum, maximum, integer
    ("HTTP_HEADER_TIMEOUT", "header_timeout", 10, 0.1, 10, False),
    ("HTTP_BODY_TIMEOUT", "body_timeout", 10, 0.1, 300, False),
    ("HTTP_IDLE_TIMEOUT", "idle_timeout", 15, 0.1, 600, False),
    ("HTTP_MAX_CONNECTIONS", "max_connections", 1000, 1, 1_000_000, True),
    ("HTTP_MAX_LARGE_BODIES", "max_large_bodies", 4, 1, 1000, True),
    ("HTTP_MAX_HEADER_BYTES", "max_header_bytes", 16384, 1024, 1024 * 1024, True),
    ("HTTP_MAX_BODY_BYTES", "max_body_bytes", 1024 * 1024, 0, 64 * 1024 * 1024, True),
    ("HTTP_DRAIN_TIMEOUT", "drain_timeout", 6, 0, 7.5, False),
    ("HTTP_STREAM_LIFETIME", "stream_lifetime", 300, 1, 86400, False),
)
# HTTP_MAX_STREAMS: from 0 to half of HTTP_MAX_CONNECTIONS (its default), so
# that streams never hold the connections other requests need
MAX_STREAMS_KEY = "HTTP_MAX_STREAMS"
STREAM_SHARE = 2                 # HTTP_MAX_CONNECTIONS // this, at most
STREAM_LIFETIME_SPREAD = 0.1     # streams end up to this share early: not all at once
LARGE_BODY_BYTES = 64 * 1024     # a body over this takes a large-body slot
MAX_REQUEST_LINE = 8192          # longer: 414
ACCEPT_LOG_INTERVAL = 10.0       # seconds between two logs of accept errors
ACCEPT_PAUSE = 0.1               # seconds before accepting again after one
REAP_TICK_MIN = 0.05             # seconds between two deadline checks, at least
REAP_TICK_MAX = 0.5              # and at most
FD_RESERVE = 64                  # descriptors kept for the broker, logs, ...
LINGER_SECONDS = 2.0             # reading what a refused client still sends
# accept failing for lack of resources: the server waits and goes on
ACCEPT_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# the client went away or is too slow: a normal end of a connection
PEER_GONE = (ConnectionError, TimeoutError, socket.timeout)

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

open_connections = Gauge(
    "http_open_connections", "Open client connections.", ["server"])
open_streams = Gauge(
    "http_open_streams", "Open streams (GET /stream).", ["server"])
limit_values = Gauge(
    "http_limit", "Configured limits of the HTTP server (README: Limits and "
    "protections).", ["server", "limit"])
connections_cut = Counter(
    "http_connections_cut_total",
    "Connections closed by the server before a request was answered, by "
    "reason (header_timeout, idle_timeout, body_timeout, drain).",
    ["server", "reason"])
requests_refused = Counter(
    "http_requests_refused_total",
    "Requests the server refused before any worker ran, by status.",
    ["server", "status"])
accept_errors = Counter(
    "http_accept_errors_total", "accept() failures, by errno name.",
    ["server", "error"])
accept_waits = Counter(
    "http_accept_waits_total",
    "Times the server stopped accepting because it had HTTP_MAX_CONNECTIONS "
    "open connections.", ["server"])

_CONTROL = {code: "\\x{:02x}".format(code)
            for code in list(range(0x20)) + list(range(0x7f, 0xa0))}
_CONTROL_KEEP_NEWLINE = dict(_CONTROL)
del _CONTROL_KEEP_NEWLINE[ord("\n")]


def escape_controls(text, keep_newlines=False):
    """``text`` with C0/C1 control characters (ESC, BEL, CR, ...) written
    as ``\\xNN``, so that a client cannot drive the terminal of whoever
    reads the log, or forge log lines."""
    return str(text).translate(_CONTROL_KEEP_NEWLINE if keep_newlines else _CONTROL)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int
    max_large_bodies: int
    max_header_bytes: int
    max_body_bytes: int
    drain_timeout: float
    stream_lifetime: float
    max_streams: int

    @classmethod
    def from_config(cls, config):
        """Every limit from the service config, checked; a bad value raises
        nameko's ConfigurationError naming the setting."""
        values = {
            attribute: number(config, key, default, minimum, maximum, integer)
            for key, attribute, default, minimum, maximum, integer in LIMITS}
        most = values["max_connections"] // STREAM_SHARE
        try:
            values["max_streams"] = number(config, MAX_STREAMS_KEY, most, 0, most, True)
        except ConfigurationError as exc:
            raise ConfigurationError(
                "{}: streams may hold at most half of HTTP_MAX_CONNECTIONS ({}); "
                "the rest is kept for other requests".format(
                    exc, values["max_connections"])) from None
        return cls(**values)


class EscapingLog:
    """The logger eventlet's server writes to (access lines, debug lines):
    each message with its control characters escaped."""

    def __init__(self, logger):
        self.logger = logger

    def _emit(self, level, msg, *args):
        if self.logger.isEnabledFor(level):
            text = msg % args if args else msg
            self.logger.log(level, "%s", escape_controls(text, keep_newlines=True))

    def debug(self, msg, *args, **kwargs):
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg, *args, **kwargs):
        # eventlet logs the traceback of an answer it could not write at
        # info; a client that went away before reading it is no error
        gone = sys.exc_info()[1]
        if isinstance(gone, ConnectionError) and str(msg).startswith("Traceback"):
            self._emit(logging.DEBUG, "client gone before its answer was written: %r", gone)
            return
        self._emit(logging.INFO, msg, *args)

    def error(self, msg, *args, **kwargs):
        self._emit(logging.ERROR, msg, *args)

    def write(self, msg, *args):
        self._emit(logging.INFO, msg, *args)


LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (somaxconn caps it)


class _Deadline(Exception):
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
        except _Deadline as exc:
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
        except _Deadline as exc:
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


class EdgeWsgiServer(wsgi.Server):
    """eventlet's server, pointing back at the EdgeWebServer that owns it."""

    def __init__(self, *args, edge, **kwargs):
        self.edge = edge
        super().__init__(*args, **kwargs)


class EdgeWebServer(WebServer):
    """nameko's ``WebServer`` with a cap on connections, accept errors that
    do not kill the container, connections in green threads of its own
    (nameko's managed threads kill the container on any error, and are
    killed before their answer is written on stop), and a draining stop.
    See the module docstring; ``label`` names it in the metrics."""

    label = "http"
    protocol = EdgeProtocol

    def __init__(self):
        super().__init__()
        self.limits = None
        self.draining = False
        self.large_bodies = None
        self._slots = None
        self._connections = {}  # green thread -> protocol (None until set up)
        self._drained = None
        self._accept_failures = 0
        self._accept_logged = 0.0
        self._reaper = None
        self._tick = None
        self.streams = 0
        self.trusted_proxies = ()

    def setup(self):
        self.limits = Limits.from_config(self.container.config)
        self.trusted_proxies = trusted_proxies(self.container.config)
        self._slots = Semaphore(self.limits.max_connections)
        self.large_bodies = Semaphore(self.limits.max_large_bodies)
        for attribute in (*(limit[1] for limit in LIMITS), "max_streams"):
            limit_values.labels(self.label, attribute).set(
                getattr(self.limits, attribute))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and \
                self.limits.max_connections + FD_RESERVE > soft:
            _log.warning(
                "HTTP_MAX_CONNECTIONS %s is not below the open file limit %s "
                "(ulimit -n) less %s: at that many connections accept fails "
                "and new clients wait", self.limits.max_connections, soft,
                FD_RESERVE)
        # deadlines are checked this often, so a cut comes at most one tick late
        self._tick = min(REAP_TICK_MAX, max(REAP_TICK_MIN, min(
            self.limits.header_timeout, self.limits.body_timeout,
            self.limits.idle_timeout) / 10))
        super().setup()

    def start(self):
        super().start()
        # nameko listens with eventlet's backlog of 50: a burst of new
        # clients past it has its handshakes dropped and retried a second
        # later by the kernel, a second lost before any deadline can start
        self._sock.listen(LISTEN_BACKLOG)
        if self._reaper is None:
            self._reaper = hubs.get_hub().schedule_call_global(self._tick, self._reap)

    def _reap(self):
        """A hub timer: throw _Deadline into each connection past its
        deadline, as eventlet.Timeout would (the check and the throw run in
        the hub, so a connection cannot move on in between)."""
        now = time.monotonic()
        for gt, protocol in list(self._connections.items()):
            at = getattr(protocol, "deadline_at", None)
            if at is not None and at <= now and not gt.dead:
                protocol.deadline_at = None
                try:
                    gt.throw(_Deadline(protocol.deadline_reason))
                except Exception:  # the connection's own handler logs it
                    pass
        if self._is_accepting or self._connections:
            self._reaper = hubs.get_hub().schedule_call_global(self._tick, self._reap)
        else:
            self._reaper = None

    def get_wsgi_server(self, sock, wsgi_app, protocol=None, debug=False):
        return EdgeWsgiServer(
            sock, sock.getsockname(), wsgi_app, edge=self,
            protocol=protocol or self.protocol, debug=debug,
            log=EscapingLog(ACCESS_LOG), url_length_limit=MAX_REQUEST_LINE,
            # a backstop for writes: the deadlines bound the reads (and
            # must come first, the reaper being up to a tick late)
            socket_timeout=max(self.limits.header_timeout,
                               self.limits.body_timeout,
                               self.limits.idle_timeout) + 2 * REAP_TICK_MAX)

    # -- accepting --------------------------------------------------------

    def run(self):
        while self._is_accepting:
            if not self._slots.acquire(blocking=False):
                accept_waits.labels(self.label).inc()
                self._slots.acquire()
            try:
                sock, address = self._sock.accept()
            except OSError as exc:
                self._slots.release()
                if not self._is_accepting:
                    return
                self._accept_failed(exc)
                continue
            sock.settimeout(self._serv.socket_timeout)
            gt = eventlet.spawn(self._serve, sock, address)
            self._connections[gt] = None
            open_connections.labels(self.label).inc()
            gt.link(self._closed)

    def _accept_failed(self, exc):
        code = exc.errno
        if code in (errno.ECONNABORTED, errno.EPROTO, errno.EAGAIN, errno.EINTR):
            return  # that client is gone already
        name = errno.errorcode.get(code, str(code))
        accept_errors.labels(self.label, name).inc()
        self._accept_failures += 1
        now = time.monotonic()
        if now - self._accept_logged >= ACCEPT_LOG_INTERVAL:
            _log.error("accept failed %s time(s) in the last %ss, last: %s; "
                       "new connections wait (open: %s, HTTP_MAX_CONNECTIONS: %s)",
                       self._accept_failures, int(ACCEPT_LOG_INTERVAL), exc,
                       len(self._connections), self.limits.max_connections)
            self._accept_failures = 0
            self._accept_logged = now
        eventlet.sleep(ACCEPT_PAUSE)

    def _serve(self, sock, address):
        try:
            self._serv.process_request([address, sock, wsgi.STATE_IDLE])
        except PEER_GONE + (_Deadline,):
            pass
        except OSError as exc:
            if "raw readinto() returned invalid length" not in str(exc):
                _log.debug("connection from %s ended: %r", address, exc)
        except Exception:
            _log.exception("connection from %s failed", address)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _closed(self, gt):
        self._connections.pop(gt, None)
        open_connections.labels(self.label).dec()
        self._slots.release()

    def track(self, protocol):
        """Called by a connection's protocol as it starts."""
        self._connections[eventlet.getcurrent()] = protocol

    # -- streams ----------------------------------------------------------

    def open_stream(self, environ):
        """Take a stream slot for the request of ``environ``: False when
        HTTP_MAX_STREAMS are open. The slot goes back when the request's
        answer ends, however it ends; the stream should end by the time
        set in ``environ[STREAM_ENDS_ENVIRON_KEY]`` (web.event_stream
        does), spread a little so that streams opened together do not all
        reconnect together."""
        if self.streams >= self.limits.max_streams or self.draining:
            protocol = self._connections.get(eventlet.getcurrent())
            if protocol is not None:  # its connection is not kept for another try
                protocol.close_connection = 1
            return False
        self.streams += 1
        open_streams.labels(self.label).inc()
        lifetime = self.limits.stream_lifetime * (
            1 - STREAM_LIFETIME_SPREAD * random.random())
        environ[STREAM_ENDS_ENVIRON_KEY] = time.monotonic() + lifetime
        return True

    def close_stream(self):
        self.streams -= 1
        open_streams.labels(self.label).dec()

    # -- stopping ---------------------------------------------------------

    def unregister_provider(self, provider):
        # the first entrypoint to stop drains the server, while workers and
        # dependencies (the vote publisher) still run
        self.drain()
        super().unregister_provider(provider)

    def drain(self):
        """Stop accepting, close idle connections and those still reading a
        request, let those with a request in hand answer it (Connection:
        close), and cut whatever is left after HTTP_DRAIN_TIMEOUT.
        Idempotent; every caller returns once the drain is over."""
        if self._drained is not None:
            self._drained.wait()
            return
        self._drained = Event()
        self.draining = True
        self._stop_accepting()
        deadline = time.monotonic() + (self.limits.drain_timeout if self.limits else 0)
        for gt, protocol in list(self._connections.items()):
            # a stream (see web.event_stream) has no end to wait for
            streaming = protocol is not None and getattr(
                protocol, "environ", {}).get(STREAMING_ENVIRON_KEY)
            if protocol is not None and protocol.phase == BUSY and not streaming:
                protocol.close_connection = 1
                protocol.conn_state[2] = wsgi.STATE_CLOSE
            else:
                connections_cut.labels(self.label, "drain").inc()
                gt.kill()
        while self._connections and time.monotonic() < deadline:
            eventlet.sleep(0.05)
        if self._connections:
            _log.warning("cutting %s connection(s) still answering after %ss",
                         len(self._connections), self.limits.drain_timeout)
            self._kill_connections()
        self._drained.send(None)

    def _stop_accepting(self):
        self._is_accepting = False
        if self._gt is not None:
            self._gt.kill()
        if self._sock is not None:
            self._sock.close()

    def _kill_connections(self):
        for gt in list(self._connections):
            connections_cut.labels(self.label, "drain").inc()
            gt.kill()

    def _stop_reaping(self):
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    def stop(self):
        self.drain()
        self._stop_reaping()
        super().stop()

    def kill(self):
        self._stop_reaping()
        self.draining = True
        self._stop_accepting()
        self._kill_connections()
        super().kill()

