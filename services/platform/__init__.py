"""Framework plumbing shared by the services: every class here extends
nameko, kombu, eventlet or werkzeug, and its docstring names the upstream
behaviour it changes and why. Nothing here knows about votes; the services
configure these pieces with their own names, tables and metrics.

- container.py: ServiceContainer with a stop deadline (SERVICE_CONTAINER_CLS)
- http/: nameko's WebServer and eventlet's protocol, hardened (limits.py,
  access_log.py, protocol.py, server.py)
- web.py: the ``http`` entrypoint with JSON answers and one error table
- amqp_layer.py: every AMQP connection the project opens itself, the
  publishing Link (confirms, deadline) and the ConsumeLoop (stall watch)
- brokers.py: failover over several nodes, queue types, the stall watch
- consumers.py: nameko's QueueConsumer, surviving a lost or stalled broker
- handlers.py: an event handler that retries and dead-letters
- rpc.py: ``rpc`` with a request id, safe against malformed requests
- dead_lettering.py: the dead-letter queues and their headers
- publisher.py: a confirmed, mandatory, persistent publisher with a deadline
  and group commit
- rpc_client.py: a client of nameko's RPC protocol with grouped calls
- batching.py: group commit, many callers in one round trip
- logs.py: the log filter named in config.yml

tests/unit/test_upstream.py checks every upstream internal used here.
"""
