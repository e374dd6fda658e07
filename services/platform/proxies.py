"""Who the client is: the socket's peer, or, when that peer is one of
TRUSTED_PROXIES, the nearest address in ``X-Forwarded-For`` that is not a
trusted proxy. One rule for everything that names a client (the access
log, the rate limits): a header any client can write names no one.
"""
import functools
import ipaddress

from services.settings import kinds

ADDRESS_CACHE = 4096  # parsed client addresses kept


def parse_networks(text):
    """TRUSTED_PROXIES: addresses or CIDR blocks, separated by commas or
    spaces (or a YAML list); the Settings hold it parsed."""
    return kinds.networks("TRUSTED_PROXIES", text, ())


@functools.lru_cache(maxsize=ADDRESS_CACHE)  # ipaddress parses slowly; clients repeat
def parse_ip(text):
    """An ip_address, or None when ``text`` is not one."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(environ, trusted):
    """The client's address: the socket's peer, unless it is a trusted
    proxy; then, walking ``X-Forwarded-For`` from its end (the entry the
    proxy wrote), the first address that is not a trusted proxy. An entry
    that is not an address stops the walk at the hop before it."""
    peer = environ.get("REMOTE_ADDR", "")
    client = parse_ip(peer)
    if not trusted or client is None:
        return peer
    hops = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")
    while any(client in network for network in trusted) and hops:
        hop = parse_ip(hops.pop())
        if hop is None:
            break
        client = hop
    return str(client)
