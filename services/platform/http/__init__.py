"""nameko's web server, hardened against what clients send.

- limits.py: the server's settings (HTTP_*), checked, and their metric
- access_log.py: the access log, with control characters escaped
- protocol.py: one connection: the request head read with deadlines and
  RFC 9112's rules, the body read before any worker, JSON refusals
- server.py: accepting within a cap, the deadline reaper, stream slots,
  the draining stop (EdgeWebServer, what services.platform.web serves on)


nameko's ``WebServer`` accepts in a loop with no cap and no timeouts, runs
every connection in a container managed thread (an error there kills the
whole container), lets the service read request bodies inside its workers,
and on stop simply kills the connections. ``EdgeWebServer`` and
``EdgeProtocol`` change that:

* at most ``HTTP_MAX_CONNECTIONS`` open connections: at the cap the server
  stops accepting (new clients wait in the listen backlog) instead of
  failing; ``accept`` running out of file descriptors or memory is counted,
  logged at most every ACCEPT_LOG_INTERVAL seconds, and retried;
* the request line and headers must arrive within ``HTTP_HEADER_TIMEOUT``
  of the connection (or of the first byte of a later request), whatever
  the pace; a kept-alive connection idle for ``HTTP_IDLE_TIMEOUT`` is
  closed;
* the body is read by the connection, before any worker runs, within
  ``HTTP_BODY_TIMEOUT``; ``Content-Length`` is required and at most
  ``HTTP_MAX_BODY_BYTES``; at most ``HTTP_MAX_LARGE_BODIES`` requests with a
  body over LARGE_BODY_BYTES are read and handled at once;
* the request line and header lines must be as RFC 9112 has them: no
  whitespace before a colon, no obs-fold, one Host in HTTP/1.1, at most one
  Content-Length and no Transfer-Encoding beside it; anything else is 400
  and the connection is closed (a parser laxer than the proxy in front is
  how requests are smuggled);
* streams (routes declared ``stream=True``) have a cap of their own,
  ``HTTP_MAX_STREAMS``, at most half of ``HTTP_MAX_CONNECTIONS``, so that
  the other half is always left to other requests; each ends after
  ``HTTP_STREAM_LIFETIME``;
* every write to a client treats a vanished peer as normal;
* the access log names the client as the rate limits do: the peer, or
  from a TRUSTED_PROXIES peer the address X-Forwarded-For gives;
* request lines and headers reach the log with control characters escaped;
* on stop it drains: no more accepting, idle connections and streams
  closed, every request already read answered with ``Connection: close``,
  the rest cut
  after ``HTTP_DRAIN_TIMEOUT``; all this before the container waits for
  its workers and stops its dependencies (the entrypoints' stop).

Errors the server answers itself are JSON: ``{"error": CODE, "message": ...}``.
"""
