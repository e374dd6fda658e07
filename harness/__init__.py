"""Real servers and processes for the fault and edge tests and the bench.

- ``harness.process``: ``nameko run`` (and other) processes with their logs,
  their config files, and waiting for them;
- ``harness.rabbit``: RabbitMQ vhosts (made and deleted in batches), queue
  depths, ``rabbitmqctl``;
- ``harness.redis_server``: a private ``redis-server`` on a free port.

No pytest here: the bench uses it too.
"""
