"""nameko's ``WebServer`` with a cap on connections, accept errors that do
not kill the container, connections in green threads of its own, a reaper
of the connections' deadlines, stream slots and a draining stop (see
services.platform.http)."""
import errno
import logging
import random
import resource
import socket
import time

import eventlet
from eventlet import hubs, wsgi
from eventlet.event import Event
from eventlet.semaphore import Semaphore
from nameko.web.server import WebServer
from prometheus_client import Counter, Gauge

from services.platform.http.access_log import ACCESS_LOG, EscapingLog
from services.platform.http.limits import LIMITS, Limits, limit_values
from services.platform.http.protocol import (
    BUSY,
    STREAM_ENDS_ENVIRON_KEY,
    STREAMING_ENVIRON_KEY,
    DeadlinePassed,
    EdgeProtocol,
    connections_cut,
)
from services.settings import settings_of

_log = logging.getLogger(__name__)

STREAM_LIFETIME_SPREAD = 0.1     # streams end up to this share early: not all at once
MAX_REQUEST_LINE = 8192          # longer: 414
ACCEPT_LOG_INTERVAL = 10.0       # seconds between two logs of accept errors
ACCEPT_PAUSE = 0.1               # seconds before accepting again after one
REAP_TICK_MIN = 0.05             # seconds between two deadline checks, at least
REAP_TICK_MAX = 0.5              # and at most
FD_RESERVE = 64                  # descriptors kept for the broker, logs, ...
# accept failing for lack of resources: the server waits and goes on
ACCEPT_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# the client went away or is too slow: a normal end of a connection
PEER_GONE = (ConnectionError, TimeoutError, socket.timeout)
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (somaxconn caps it)

open_connections = Gauge(
    "http_open_connections", "Open client connections.", ["server"])
open_streams = Gauge(
    "http_open_streams", "Open streams (GET /stream).", ["server"])
accept_errors = Counter(
    "http_accept_errors_total", "accept() failures, by errno name.",
    ["server", "error"])
accept_waits = Counter(
    "http_accept_waits_total",
    "Times the server stopped accepting because it had HTTP_MAX_CONNECTIONS "
    "open connections.", ["server"])


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
        settings = settings_of(self.container)
        self.limits = Limits.from_settings(settings)
        self.trusted_proxies = settings.trusted_proxies
        self._slots = Semaphore(self.limits.max_connections)
        self.large_bodies = Semaphore(self.limits.max_large_bodies)
        for attribute in LIMITS:
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
        """A hub timer: throw DeadlinePassed into each connection past its
        deadline, as eventlet.Timeout would (the check and the throw run in
        the hub, so a connection cannot move on in between)."""
        now = time.monotonic()
        for gt, protocol in list(self._connections.items()):
            at = getattr(protocol, "deadline_at", None)
            if at is not None and at <= now and not gt.dead:
                protocol.deadline_at = None
                try:
                    gt.throw(DeadlinePassed(protocol.deadline_reason))
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
        except PEER_GONE + (DeadlinePassed,):
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

