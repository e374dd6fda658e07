"""``json_http``: nameko's HTTP entrypoint with JSON everywhere and one
error table.

Every response, errors included, is JSON with ``Cache-Control: no-store``:
unknown routes (404), wrong methods (405, also HEAD where GET is declared),
oversized bodies (413), and any unexpected error, answered with a generic
500 that reveals nothing. The server underneath, with its limits, is
services.platform.http.

The service's table of exception -> (status, CODE) alone decides 4xx/503
against 500: a route declares no ``expected_exceptions`` (the table's
classes are), and every error is logged once: by nameko's container when a
worker raised it (a table error as one line, see services.platform.logs; any
other with its traceback), or here, with its traceback, when it came from
outside any worker.
"""
import json
import logging
import time
from functools import partial

import eventlet
from eventlet.event import Event
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WsgiApp, parse_address
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from services import settings
from services.platform import correlation
from services.platform.cors import Cors
from services.platform.http.protocol import (
    ERROR_CODES,
    STREAM_ENDS_ENVIRON_KEY,
    STREAMING_ENVIRON_KEY,
)
from services.platform.http.server import EdgeWebServer
from services.settings import settings_of

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # the default of HTTP_MAX_BODY_BYTES
MAX_FORM_FIELDS = 100
RETRY_AFTER_SECONDS = "1"
STREAM_RETRY_AFTER_SECONDS = "5"  # a stream slot frees when one ends


class TooManyFields(ValueError):
    """A form body with more than MAX_FORM_FIELDS fields."""


def json_response(status, body, headers=None):
    response = Response(
        json.dumps(body, separators=(",", ":")),
        status=status, mimetype="application/json", headers=headers,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def sse_event(event, data, event_id=None, retry=None):
    """One Server-Sent Event, as bytes."""
    lines = []
    if retry is not None:
        lines.append("retry: {}".format(int(retry)))
    if event_id is not None:
        lines.append("id: {}".format(event_id))
    lines.append("event: {}".format(event))
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def event_stream(request, chunks):
    """A ``text/event-stream`` answer that writes each chunk the iterable
    ``chunks`` yields as soon as it comes, until the stream's lifetime
    (HTTP_STREAM_LIFETIME) is over; then it ends cleanly, and EventSource
    reconnects by itself. The iterable runs in the connection's thread once
    the worker has returned, so a stream holds no nameko worker; eventlet
    would otherwise gather writes up to 4 KiB, and the server's drain would
    wait for an end that never comes. Only for a route declared
    ``stream=True``, which holds the stream's slot (HTTP_MAX_STREAMS)."""
    ends = request.environ.get(STREAM_ENDS_ENVIRON_KEY)
    if ends is None:
        raise RuntimeError("event_stream needs a route declared with stream=True")
    request.environ["eventlet.minimum_write_chunk_size"] = 0
    request.environ[STREAMING_ENVIRON_KEY] = True
    response = Response(_until(ends, chunks), mimetype="text/event-stream",
                        direct_passthrough=True)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer
    return response


def _until(ends, chunks):
    """The chunks of ``chunks`` until the monotonic time ``ends``: the wait
    for the next one is cut then (the write of one is bounded by the
    server's socket timeout)."""
    chunks = iter(chunks)
    try:
        while (left := ends - time.monotonic()) > 0:
            timer = eventlet.Timeout(left)
            try:
                chunk = next(chunks, None)
            except eventlet.Timeout as exc:
                if exc is not timer:
                    raise
                return
            finally:
                timer.cancel()
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def error_response(status, code, message, headers=None):
    response = json_response(status, {"error": code, "message": message}, headers)
    response.error_code = code  # for the metrics
    return response


def response_for_http_exception(exc):
    code = ERROR_CODES.get(exc.code, "HTTP_{}".format(exc.code))
    headers = {}
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    message = {
        404: "no such resource",
        405: "method not allowed",
        413: "request body is larger than {} bytes".format(MAX_BODY_BYTES),
    }.get(exc.code, exc.description or exc.name)
    return error_response(exc.code, code, message, headers)


def response_for_exception(exc, errors, logged=False):
    """The answer to ``exc`` from ``errors`` ((exception class or tuple,
    status, CODE), matched with isinstance, in order), with the headers of
    its ``headers`` attribute if it has one; anything else is a 500, logged
    with its traceback unless ``logged`` (nameko's container has logged it
    already)."""
    for exc_type, status, code in errors:
        if isinstance(exc, exc_type):
            headers = getattr(exc, "headers", None) or (
                {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None)
            return error_response(status, code, str(exc), headers)
    if isinstance(exc, HTTPException) and exc.code and exc.code < 500:
        return response_for_http_exception(exc)
    if not logged:
        _log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(500, "INTERNAL_ERROR", "unexpected error")


class JsonWsgiApp(WsgiApp):
    """nameko's WSGI application, whose errors (no route, wrong method, a
    body over the limit, a bug) werkzeug answers in HTML: here in JSON, from
    the server's error table. CORS (services.platform.cors) is answered
    and added here, around the routes."""

    def __call__(self, environ, start_response):
        cors = self.server.cors
        if cors.is_preflight(environ):
            response = self.preflight(cors, environ)
        else:
            response = cors.decorate(environ, self.respond(environ))
        # no browser may run an answer as another type than it says
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers[correlation.HEADER] = correlation.request_id(environ)
        return response(environ, start_response)

    @staticmethod
    def preflight(cors, environ):
        origin = cors.allowed(environ)
        if origin is None:
            response = error_response(
                403, "CORS_ORIGIN_REFUSED",
                "this origin may not call the API from a browser")
        else:
            response = Response(status=204, headers=cors.preflight_headers(origin))
        response.vary.add("Origin")
        return response

    def respond(self, environ):
        try:
            request = Request(environ, shallow=True)
            request.max_content_length = self.server.limits.max_body_bytes
            _refuse_large_forms(request, environ)
            adapter = self.url_map.bind_to_environ(environ)
            provider, values = adapter.match()
            request.path_values = values
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = (response_for_http_exception(exc) if exc.code >= 400
                        else exc.get_response(environ))
        except Exception as exc:
            response = response_for_exception(exc, self.server.errors)
        return response


def _refuse_large_forms(request, environ):
    """A form body of many empty fields (``a&a&a...``) costs werkzeug about
    30 times its size to parse; no form of this API has more than a few."""
    if request.mimetype == "application/x-www-form-urlencoded":
        fields = environ.get("edge.body", b"").count(b"&") + 1
        if fields > MAX_FORM_FIELDS:
            raise TooManyFields("body: a form has at most {} fields".format(
                MAX_FORM_FIELDS))


class JsonWebServer(EdgeWebServer):
    """The hardened server (services.platform.http.server) with nameko's
    WSGI application replaced by JsonWsgiApp; ``errors`` is the service's
    table."""

    errors = ()
    cors = Cors()

    def setup(self):
        super().setup()
        self.cors = Cors.from_settings(settings_of(self.container))

    def get_wsgi_app(self):
        return JsonWsgiApp(self)


class JsonHttp(HttpRequestHandler):
    """nameko's ``http`` entrypoint, changed in six ways:

    * ``expected_exceptions`` is the server's error table (a route may not
      declare its own), so the table is the one source of 4xx against 500;
    * HEAD only where declared: werkzeug answers HEAD on every GET route
      by running the GET handler (HEAD /vote would cast a vote);
    * no ``inspect.getcallargs`` signature check per request (6% of the
      gateway's CPU): every method takes (self, request);
    * ``handle_request`` without upstream's reference cycle (see
      ``_answer_by_worker``), answering from the table, and timing each
      request for ``observe``;
    * ``inline``: a route may answer some requests without a worker.
      ``inline(providers, request)`` runs in the connection's thread, with
      the service's dependency providers by attribute name, and returns a
      response or None (then a worker runs the route as usual). It must
      not wait for anything: it is for answers already in memory, where
      spawning a worker costs more than the answer;
    * ``stream=True``: the route answers with web.event_stream. Each request
      takes a stream slot of the server first (HTTP_MAX_STREAMS), held until
      its answer ends; with none left, it is refused with 503
      TOO_MANY_STREAMS and Retry-After, before any worker runs.
    """

    server = JsonWebServer()
    observe = None  # observe(route, response, seconds), or None

    def __init__(self, method, url, inline=None, stream=False, **kwargs):
        if "expected_exceptions" in kwargs:
            raise TypeError("the error table decides what is expected")
        super().__init__(method, url, expected_exceptions=tuple(
            exc_type for exc_type, _, _ in self.server.errors), **kwargs)
        self.inline = inline
        self.stream = stream
        self.providers = None

    def setup(self):
        super().setup()
        if self.inline is not None:
            self.providers = {provider.attr_name: provider
                              for provider in self.container.dependencies}

    def get_url_rule(self):
        rule = super().get_url_rule()
        if "HEAD" not in self.method.upper().split(","):
            rule.methods.discard("HEAD")
        return rule

    def check_signature(self, args, kwargs):
        pass

    def handle_request(self, request):
        """The inline answer if the route has one for this request, else
        the worker's; timed for ``observe`` either way."""
        started = time.perf_counter()
        request.shallow = False
        response = None
        if self.stream and not self.server.open_stream(request.environ):
            response = error_response(
                503, "TOO_MANY_STREAMS",
                "this server holds {} streams, its most; retry later".format(
                    self.server.limits.max_streams),
                {"Retry-After": STREAM_RETRY_AFTER_SECONDS})
        if response is None and self.inline is not None:
            response = self._answer_inline(request)
        if response is None:
            response = self._answer_by_worker(request)
        if self.observe is not None:
            self.observe(self.url, response, time.perf_counter() - started)
        return response

    def _answer_by_worker(self, request):
        """nameko's, without its reference cycle: a worker's exception is
        raised again by ``Event.wait``, whose frame (in the traceback)
        holds the Event, which holds the exception; so the exception, its
        traceback, the request and its parsed body stayed in memory until
        the cyclic garbage collector ran (a 1 MiB body that parses to
        15 MB, 40 times over, kept 450 MB)."""
        event = Event()
        errors = self.server.errors
        try:
            args, kwargs = self.get_entrypoint_parameters(request)
            self.container.spawn_worker(
                self, args, kwargs,
                context_data=self.server.context_data_from_headers(request),
                handle_result=partial(self.handle_result, event))
        except Exception as exc:  # no worker ran: nobody logged it
            return response_for_exception(exc, errors)
        try:
            return self.response_from_result(event.wait())
        except Exception as exc:  # the container logged the worker's
            return response_for_exception(exc, errors, logged=True)
        finally:
            if event.ready():
                event.reset()  # drops the exception Event.wait's frame holds

    def _answer_inline(self, request):
        """The inline answer, or None; a failing ``inline`` is a bug, logged,
        and the worker answers instead."""
        try:
            return self.inline(self.providers, request)
        except Exception:
            _log.exception("inline answer of %s failed; a worker answers", self.url)
            return None


class OptionalJsonServer(JsonWebServer):
    """A JsonWebServer on the address of ``address_config_key`` instead of
    WEB_SERVER_ADDRESS; while that setting is empty, no server at all (no
    socket, no metrics), though its routes are declared."""

    address_config_key = None

    @property
    def configured(self):
        return bool(settings_of(self.container)[self.address_config_key])

    @property
    def bind_addr(self):  # read by inspect too, while unset
        # one setting alone: nameko reads this while it binds, before the start
        address = settings.read(self.container.config, self.address_config_key)
        return parse_address(address) if address else None

    def setup(self):
        if self.configured:
            super().setup()

    def start(self):
        if self.configured:
            super().start()

    def stop(self):
        if self._gt is not None:
            super().stop()

    def kill(self):
        if self._gt is not None:
            super().kill()


def json_http(errors, label, observe=None, address_config_key=None):
    """An ``http`` decorator for one service: ``errors`` its table of
    (exception class or tuple, status, CODE), ``label`` the server's name
    in the http_* metrics, ``observe`` a per-request metrics hook. With
    ``address_config_key``, the routes are on a server of their own at that
    setting's address, started only when it is set (OptionalJsonServer)."""

    class Server(OptionalJsonServer if address_config_key else JsonWebServer):
        pass

    Server.errors, Server.label = tuple(errors), label
    if address_config_key:
        Server.address_config_key = address_config_key

    class Http(JsonHttp):
        server = Server()

    Http.observe = staticmethod(observe) if observe is not None else None
    return Http.decorator


class MetricsServer(EdgeWebServer):
    """nameko's WebServer binds WEB_SERVER_ADDRESS, one per process: this
    one binds ``address_config_key`` instead, so that a service's /health
    and /metrics have a port of their own (two services may run in one
    process), with the same limits. Failing to bind is logged, not fatal:
    a service's work matters more than being watched."""

    address_config_key = "METRICS_ADDRESS"

    @property
    def bind_addr(self):
        # one setting alone: nameko reads this while it binds, before the start
        return parse_address(settings.read(self.container.config, self.address_config_key))

    def start(self):
        try:
            super().start()
        except OSError as exc:
            _log.error("metrics server not started on %s: %s",
                       "{}:{}".format(*self.bind_addr), exc)

    def stop(self):
        if self._gt is not None:  # never started: nothing to drain
            super().stop()


def metrics_http(label, errors=()):
    """An ``http`` decorator for routes on the MetricsServer; ``label``
    names it in the http_* metrics; ``errors``, a table as json_http's,
    answers the exceptions a route raises in JSON (the operator gate's)."""

    class Server(MetricsServer):
        pass

    Server.label = label

    class MetricsHttp(HttpRequestHandler):
        server = Server()

        def __init__(self, method, url, **kwargs):
            super().__init__(method, url, expected_exceptions=tuple(
                exc_type for exc_type, _, _ in errors), **kwargs)

        def response_from_exception(self, exc):
            # a worker's: the container has logged it
            return response_for_exception(exc, errors, logged=True)

        def handle_request(self, request):
            response = super().handle_request(request)
            response.headers["X-Content-Type-Options"] = "nosniff"  # as JsonWsgiApp's
            return response

    return MetricsHttp.decorator
