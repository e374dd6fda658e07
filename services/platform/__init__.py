"""Framework plumbing shared by the services: every class here extends
nameko, kombu, eventlet or werkzeug, and its docstring names the upstream
behaviour it changes and why. Nothing here knows about votes; the services
configure these pieces with their own names, tables and metrics.

- container.py: ServiceContainer with a stop deadline (SERVICE_CONTAINER_CLS)
- http_server.py: nameko's WebServer and eventlet's protocol, hardened
- web.py: the ``http`` entrypoint with JSON answers and one error table
- events.py: an event handler that retries and dead-letters, and consumers
  that survive a lost broker; ``rpc`` with a request id
- publisher.py: a confirmed, mandatory, persistent publisher with a deadline
- rpc_client.py: a client of nameko's RPC protocol with grouped calls
- batching.py: group commit, many callers in one round trip
- logs.py: the log filter named in config.yml

tests/unit/test_upstream.py checks every upstream internal used here.
"""
