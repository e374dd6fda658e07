"""The wire contract (services/contracts.py) against what nameko and the
services really declare: renaming a handler or a method without the
contract fails here, not in production with a queue nobody reads."""
from nameko.events import EventHandler
from nameko.rpc import Rpc
from nameko.testing.utils import get_extension

from services import contracts
from services.gateway.service import GatewayService
from services.votes.service import VotesService


def test_the_votes_queue_is_the_one_nameko_declares(container_factory):
    container = container_factory(VotesService, {"AMQP_URI": "memory://"})
    handler = get_extension(container, EventHandler)
    assert handler.method_name == contracts.VOTE_CAST_HANDLER
    assert (handler.source_service, handler.event_type) == (
        contracts.GATEWAY_SERVICE, contracts.VOTE_CAST)
    handler.setup()
    assert handler.queue.name == contracts.VOTES_QUEUE
    assert handler.queue.exchange.name == contracts.EVENTS_EXCHANGE


def test_the_votes_rpc_methods_exist(container_factory):
    container = container_factory(VotesService, {"AMQP_URI": "memory://"})
    methods = {ext.method_name for ext in container.entrypoints if isinstance(ext, Rpc)}
    assert set(contracts.RPC_METHODS) <= methods
    assert contracts.RPC_QUEUE == "rpc-{}".format(VotesService.name)


def test_service_names():
    assert (GatewayService.name, VotesService.name) == (
        contracts.GATEWAY_SERVICE, contracts.VOTES_SERVICE)


def test_key_builders_and_patterns():
    assert contracts.post_id_of(contracts.post_key("0348")) == "0348"
    assert contracts.POST_KEY_PATTERN.endswith("*")
    assert len({contracts.post_key("x"), contracts.voters_key("x"),
                contracts.retracted_key("x"), contracts.applied_key("x"),
                contracts.once_key("x"), contracts.KEY_TOP}) == 6
