"""``http``: nameko's HTTP entrypoint with JSON everywhere.

Every response, errors included, is JSON with ``Cache-Control: no-store``:
unknown routes (404), wrong methods (405), oversized bodies (413), and any
unexpected error, which is logged with its traceback and answered with a
generic 500 that reveals nothing.
"""
import json
import logging
import time

from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer, WsgiApp
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
from services.shutdown import arm_stop_deadline

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = "1"

# exception class -> (status, error code); matched with isinstance, in order
ERRORS = (
    (ValidationError, 400, "VALIDATION_ERROR"),
    (PostNotFound, 404, "POST_NOT_FOUND"),
    (IdempotencyKeyReused, 422, "IDEMPOTENCY_KEY_REUSED"),
    (BrokerUnavailable, 503, "BROKER_UNAVAILABLE"),
    (ServiceUnavailable, 503, "SERVICE_UNAVAILABLE"),
)
HTTP_ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
}


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
            request.max_content_length = MAX_BODY_BYTES
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


class JsonErrorsProtocol(HttpOnlyProtocol):
    """eventlet answers a request it cannot parse before any WSGI code runs:
    give those answers JSON bodies too."""

    def _read_request_line(self):
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

    def send_error(self, code, message=None, explain=None):
        if code >= 500:  # 505 for an unknown HTTP version: bad input all the same
            code = 400
        body = json.dumps({
            "error": HTTP_ERROR_CODES.get(code, "HTTP_{}".format(code)),
            "message": message or self.responses.get(code, ("error",))[0],
        }).encode()
        self.close_connection = True
        # the request line may not have been parsed (yet); answer as HTTP/1.0,
        # since an HTTP/0.9 answer would carry no status line
        self.requestline = getattr(self, "requestline", "")[:200]
        self.request_version = "HTTP/1.0"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


class JsonWebServer(WebServer):

    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def get_wsgi_server(self, sock, wsgi_app, protocol=JsonErrorsProtocol,
                        debug=False):
        return super().get_wsgi_server(sock, wsgi_app, protocol, debug)


class HttpEntrypoint(HttpRequestHandler):

    server = JsonWebServer()

    def stop(self):
        arm_stop_deadline(self.container)
        super().stop()

    def check_signature(self, args, kwargs):
        # every method takes (self, request); nameko's inspect.getcallargs
        # check on each request cost 6% of the gateway's CPU
        pass

    def handle_request(self, request):
        started = time.perf_counter()
        response = super().handle_request(request)
        metrics.observe_request(self.url, response, time.perf_counter() - started)
        return response

    def response_from_exception(self, exc):
        return response_for_exception(exc)


http = HttpEntrypoint.decorator
