"""End-to-end benchmark of the vote-counting services: ``python -m bench``.

Starts its own copies of everything it measures (a RabbitMQ vhost, a Redis
server, the gateway, the votes service and a bare nameko ``@http`` service)
on free ports, drives them with wrk and with a small asyncio client, prints
one table and removes all it made, also on Ctrl-C or error.
"""
