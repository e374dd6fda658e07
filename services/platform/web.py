"""``http``: nameko's HTTP entrypoint with JSON everywhere.

Every response, errors included, is JSON with ``Cache-Control: no-store``:
unknown routes (404), wrong methods (405, also HEAD where GET is declared),
oversized bodies (413), and any unexpected error, which is logged with its
traceback and answered with a generic 500 that reveals nothing. The server
underneath, with its limits, is services.http_server.
"""
import json
import logging
import time
from functools import partial

from eventlet.event import Event
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WsgiApp
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from services.gateway import metrics
from services.gateway.exceptions import (
    BrokerUnavailable,
    IdempotencyKeyReused,
    PostNotFound,
    ServiceUnavailable,
    ValidationError,
)
from services.http_server import ERROR_CODES, EdgeWebServer
from services.shutdown import arm_stop_deadline

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # the default of HTTP_MAX_BODY_BYTES
MAX_FORM_FIELDS = 100
RETRY_AFTER_SECONDS = "1"

# exception class -> (status, error code); matched with isinstance, in order
ERRORS = (
    (ValidationError, 400, "VALIDATION_ERROR"),
    (PostNotFound, 404, "POST_NOT_FOUND"),
    (IdempotencyKeyReused, 422, "IDEMPOTENCY_KEY_REUSED"),
    (BrokerUnavailable, 503, "BROKER_UNAVAILABLE"),
    (ServiceUnavailable, 503, "SERVICE_UNAVAILABLE"),
)
HTTP_ERROR_CODES = ERROR_CODES


def json_response(status, body, headers=None):
    response = Response(
        json.dumps(body, separators=(",", ":")),
        status=status, mimetype="application/json", headers=headers,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(status, code, message, headers=None):
    response = json_response(status, {"error": code, "message": message}, headers)
    response.error_code = code  # for the metrics
    return response


def response_for_http_exception(exc):
    code = HTTP_ERROR_CODES.get(exc.code, "HTTP_{}".format(exc.code))
    headers = {}
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    message = {
        404: "no such resource",
        405: "method not allowed",
        413: "request body is larger than {} bytes".format(MAX_BODY_BYTES),
    }.get(exc.code, exc.description or exc.name)
    return error_response(exc.code, code, message, headers)


def response_for_exception(exc):
    for exc_type, status, code in ERRORS:
        if isinstance(exc, exc_type):
            headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
            return error_response(status, code, str(exc), headers)
    if isinstance(exc, HTTPException) and exc.code and exc.code < 500:
        return response_for_http_exception(exc)
    _log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(500, "INTERNAL_ERROR", "unexpected error")


class JsonWsgiApp(WsgiApp):

    def __call__(self, environ, start_response):
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
            response = response_for_exception(exc)
        return response(environ, start_response)


def _refuse_large_forms(request, environ):
    """A form body of many empty fields (``a&a&a...``) costs werkzeug about
    30 times its size to parse; no form of this API has more than a few."""
    if request.mimetype == "application/x-www-form-urlencoded":
        fields = environ.get("edge.body", b"").count(b"&") + 1
        if fields > MAX_FORM_FIELDS:
            raise ValidationError("body: a form has at most {} fields".format(
                MAX_FORM_FIELDS))


class JsonWebServer(EdgeWebServer):
    """The gateway's server (services.http_server), with JSON answers from
    the WSGI application too."""

    label = "gateway"

    def get_wsgi_app(self):
        return JsonWsgiApp(self)


class HttpEntrypoint(HttpRequestHandler):

    server = JsonWebServer()

    def stop(self):
        arm_stop_deadline(self.container)
        super().stop()

    def get_url_rule(self):
        # werkzeug answers HEAD on every GET route by running the GET
        # handler: HEAD /vote would cast a vote. HEAD only where declared.
        rule = super().get_url_rule()
        if "HEAD" not in self.method.upper().split(","):
            rule.methods.discard("HEAD")
        return rule

    def check_signature(self, args, kwargs):
        # every method takes (self, request); nameko's inspect.getcallargs
        # check on each request cost 6% of the gateway's CPU
        pass

    def handle_request(self, request):
        """nameko's, without its reference cycle: a worker's exception is
        raised again by ``Event.wait``, whose frame (in the traceback)
        holds the Event, which holds the exception; so the exception, its
        traceback, the request and its parsed body stayed in memory until
        the cyclic garbage collector ran (a 1 MiB body that parses to
        15 MB, 40 times over, kept 450 MB)."""
        started = time.perf_counter()
        request.shallow = False
        event = Event()
        try:
            args, kwargs = self.get_entrypoint_parameters(request)
            self.container.spawn_worker(
                self, args, kwargs,
                context_data=self.server.context_data_from_headers(request),
                handle_result=partial(self.handle_result, event))
            response = self.response_from_result(event.wait())
        except Exception as exc:
            response = self.response_from_exception(exc)
        finally:
            if event.ready():
                event.reset()  # drops the exception Event.wait's frame holds
        metrics.observe_request(self.url, response, time.perf_counter() - started)
        return response

    def response_from_exception(self, exc):
        return response_for_exception(exc)


http = HttpEntrypoint.decorator
