"""Container health probe: ``python -m services.healthcheck URL``.

Exits 0 when URL answers a GET with a 2xx status within TIMEOUT seconds,
and 1 otherwise (never 2: Docker reserves that exit code), printing one line
that says which. Standard library only, so it runs in the bare image and
imports nothing from the services themselves.
"""
import http.client
import sys
import time
from urllib.parse import urlsplit

TIMEOUT = 3.0  # seconds, for the whole probe


def probe(url, timeout=TIMEOUT):
    """Return (ok, message) for one GET of url."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        connection_class = http.client.HTTPConnection
    elif parts.scheme == "https":
        connection_class = http.client.HTTPSConnection
    else:
        return False, "unsupported URL {!r}: need http:// or https://".format(url)
    if not parts.hostname:
        return False, "no host in URL {!r}".format(url)
    try:
        port = parts.port
    except ValueError as exc:
        return False, "bad port in URL {!r}: {}".format(url, exc)

    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    deadline = time.monotonic() + timeout
    connection = connection_class(parts.hostname, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read(65536)  # drain a little; the body itself is not checked
        status = response.status
    except OSError as exc:  # refused, reset, DNS, timeout (socket.timeout)
        return False, "GET {} failed: {}".format(url, exc or type(exc).__name__)
    except http.client.HTTPException as exc:
        return False, "GET {} failed: {}".format(url, exc or type(exc).__name__)
    finally:
        connection.close()

    if time.monotonic() > deadline:
        return False, "GET {} answered {} but took over {}s".format(url, status, timeout)
    if 200 <= status < 300:
        return True, "GET {} answered {}".format(url, status)
    return False, "GET {} answered {}".format(url, status)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m services.healthcheck URL")
        return 1
    ok, message = probe(argv[0])
    print(("healthy: " if ok else "unhealthy: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
