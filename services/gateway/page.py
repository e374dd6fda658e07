"""The live page (static/index.html), for ``GET /`` to serve: one file of
HTML and plain JavaScript, nothing fetched from elsewhere, and the headers
that keep it so: a Content-Security-Policy allowing only this origin and
the page's own inline script and style (by their SHA-256, taken from the
file, so that the policy follows every edit of the page), no framing.

With voter tokens on, the page is served with ``data-voter-tokens``
on its ``<html>`` element, so that it knows its arrows need a token before
it sends anything (an attribute: the hashed blocks stay the same)."""
import base64
import hashlib
import re
from pathlib import Path

PAGE_PATH = Path(__file__).with_name("static") / "index.html"
CONTENT_TYPE = "text/html; charset=utf-8"

_INLINE = {kind: re.compile(rb"<%s>(.*?)</%s>" % (kind, kind), re.DOTALL)
           for kind in (b"script", b"style")}

_TOKENS_MARK = (b'<html lang="en">', b'<html lang="en" data-voter-tokens="required">')

_page = None
_headers = None


def index_html(voter_tokens=None):
    """The page's bytes, read once; marked when ``voter_tokens`` (the
    gateway's tokens checker) requires tokens."""
    global _page
    if _page is None:
        plain = PAGE_PATH.read_bytes()
        _page = (plain, plain.replace(*_TOKENS_MARK, 1))
    return _page[int(bool(getattr(voter_tokens, "enabled", False)))]


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
