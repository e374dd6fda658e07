"""CORS for the JSON web server (services.platform.web): an allow-list of
origins, so that a page on another site can call the API from a browser.

Off while CORS_ORIGINS is empty: no CORS header is ever sent, and OPTIONS
answers 405 as any undeclared method. When on:

* a preflight (``OPTIONS`` with ``Origin``) from a listed origin answers
  ``204`` with ``Access-Control-Allow-Origin`` (that origin), ``-Methods``,
  ``-Headers``, ``-Max-Age`` and ``Vary: Origin``, before any route is
  matched; from any other origin ``403 CORS_ORIGIN_REFUSED``, without CORS
  headers;
* any other answer to a listed origin carries ``Access-Control-Allow-Origin``
  and ``-Expose-Headers`` (so that a page can read Retry-After and the
  RateLimit headers); every answer carries ``Vary: Origin``;
* a request from an unlisted origin is answered as before, without CORS
  headers: the browser keeps the answer from the page. CORS guards what a
  page may read, not who may call: any client that is not a browser sends
  what it likes.

``Access-Control-Allow-Credentials: true`` only with
CORS_ALLOW_CREDENTIALS (cookies are of no use to this API; tokens go in
``Authorization``, which needs no credentials mode).
"""
from services.settings import Settings

DEFAULT_MAX_AGE = 600
ALLOW_METHODS = "GET, POST, PUT"  # PUT: the operator's /posts/<postId>
ALLOW_HEADERS = ("Authorization, Content-Type, Idempotency-Key, Last-Event-ID, "
                 "X-Request-Id")
EXPOSE_HEADERS = ("Retry-After, RateLimit-Limit, RateLimit-Remaining, "
                  "RateLimit-Reset, RateLimit-Policy, X-Request-Id")


class Cors:
    """The policy of one server; ``origins`` empty: off (``enabled``
    False: no header is added, OPTIONS is an undeclared method)."""

    def __init__(self, origins=(), credentials=False, max_age=DEFAULT_MAX_AGE):
        self.origins = frozenset(origins)
        self.credentials = credentials
        self.max_age = str(max_age)

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.cors_origins, settings.cors_allow_credentials,
                   settings.cors_max_age)

    @classmethod
    def from_config(cls, config):
        return cls.from_settings(Settings(config))

    @property
    def enabled(self):
        return bool(self.origins)

    def is_preflight(self, environ):
        return (self.enabled and environ.get("REQUEST_METHOD") == "OPTIONS"
                and "HTTP_ORIGIN" in environ)

    def allowed(self, environ):
        origin = environ.get("HTTP_ORIGIN")
        return origin if origin in self.origins else None

    def preflight_headers(self, origin):
        headers = self._allow(origin)
        headers.update({
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": self.max_age,
        })
        return headers

    def _allow(self, origin):
        headers = {"Access-Control-Allow-Origin": origin}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def decorate(self, environ, response):
        """Add the CORS headers of an answer that is not a preflight."""
        if not self.enabled:
            return response
        response.vary.add("Origin")
        origin = self.allowed(environ)
        if origin is not None:
            response.headers.update(self._allow(origin))
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
