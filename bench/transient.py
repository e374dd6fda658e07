"""The gateway with its votes published as transient messages (delivery
mode 1), which RabbitMQ confirms without writing them to disk. The single
votes phase runs it beside the gateway to show what the durable confirm
costs. Never deploy it: a broker restart loses every vote it queued.
Run with ``nameko run --config config.yml bench.transient``.
"""
# modules, not classes: nameko run would start every service class it
# finds in this module's namespace
from services.gateway import dependencies, service


class TransientVotePublisher(dependencies.VotePublisher):
    delivery_mode = 1


class TransientGatewayService(service.GatewayService):
    cast_votes = TransientVotePublisher()
