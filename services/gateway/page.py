"""The live page (static/index.html), for ``GET /`` to serve: one file of
HTML and plain JavaScript, nothing fetched from elsewhere."""
from pathlib import Path

PAGE_PATH = Path(__file__).with_name("static") / "index.html"
CONTENT_TYPE = "text/html; charset=utf-8"

_page = None


def index_html():
    """The page's bytes, read once."""
    global _page
    if _page is None:
        _page = PAGE_PATH.read_bytes()
    return _page
