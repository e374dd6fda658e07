"""The live page (static/index.html), for ``GET /`` to serve: one file of
HTML and plain JavaScript, nothing fetched from elsewhere, and the headers
that keep it so: a Content-Security-Policy allowing only this origin and
the page's own inline script and style (by their SHA-256, taken from the
file, so that the policy follows every edit of the page), no framing."""
import base64
import hashlib
import re
from pathlib import Path

PAGE_PATH = Path(__file__).with_name("static") / "index.html"
CONTENT_TYPE = "text/html; charset=utf-8"

_INLINE = {kind: re.compile(rb"<%s>(.*?)</%s>" % (kind, kind), re.DOTALL)
           for kind in (b"script", b"style")}

_page = None
_headers = None


def index_html():
    """The page's bytes, read once."""
    global _page
    if _page is None:
        _page = PAGE_PATH.read_bytes()
    return _page


def _hashes(html, kind):
    return " ".join(
        "'sha256-{}'".format(base64.b64encode(hashlib.sha256(block).digest()).decode())
        for block in _INLINE[kind].findall(html))


def content_security_policy(html):
    return "; ".join([
        "default-src 'self'",
        "script-src " + _hashes(html, b"script"),
        "style-src " + _hashes(html, b"style"),
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def headers():
    """The page's security headers (nosniff comes with every answer)."""
    global _headers
    if _headers is None:
        _headers = {
            "Content-Security-Policy": content_security_policy(index_html()),
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",  # frame-ancestors, for older browsers
            "Cache-Control": "no-cache",
        }
    return _headers
