"""The wire contract (services/contracts.py) against what nameko and the
services really declare: renaming a handler or a method without the
contract fails here, not in production with a queue nobody reads."""
import pytest
from nameko.events import EventHandler
from nameko.rpc import Rpc
from nameko.testing.utils import get_extension
from redis.crc import key_slot

from services import contracts, rules
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
    assert contracts.post_id_of(contracts.post_key("a:post:b")) == "a:post:b"
    assert contracts.POST_KEY_PATTERN.endswith("*")
    bucket = contracts.bucket_of("x")
    assert len({contracts.post_key("x"), contracts.voters_key("x"),
                contracts.retracted_key("x"), contracts.applied_key(bucket, "x"),
                contracts.once_key(bucket, "x"), contracts.claim_key("x"),
                contracts.top_key(bucket)}) == 7


def test_every_key_of_a_bucket_is_in_one_hash_slot():
    """What lets one script touch a whole bucket on a Redis Cluster."""
    for post_id in ("348", "0348", "p-17", "z" * 64):
        bucket = contracts.bucket_of(post_id)
        keys = [contracts.post_key(post_id), contracts.voters_key(post_id),
                contracts.retracted_key(post_id), contracts.top_key(bucket),
                contracts.applied_key(bucket, "e1"), contracts.once_key(bucket, "k")]
        assert len({key_slot(key.encode()) for key in keys}) == 1
        assert contracts.bucket_of_key(keys[0]) == bucket
        assert contracts.post_keys(bucket, post_id) == tuple(keys[:3])
    assert contracts.bucket_of_key(contracts.claim_key("k")) == contracts.bucket_of("k")


@pytest.mark.parametrize("buckets", [1, 2, 16, 1024])
def test_buckets_cover_their_range(buckets):
    seen = {contracts.bucket_of("p{}".format(i), buckets) for i in range(20 * buckets)}
    assert seen == set(range(buckets))


def test_idempotency_key_derivations_are_pinned():
    """A key's id and a request's fingerprint are stored (IDEMPOTENCY_TTL):
    a change of either turns every retry within the TTL into a new vote or
    a conflict. createdAt is in the fingerprint only when given, so that
    a request without one keeps the fingerprint it had before."""
    assert rules.key_id("order-17") == "72a90ea3da8b5dd01bde2f27314e02e2"
    # sha256('[["348",1,""]]')[:16], as before createdAt counted
    assert rules.fingerprint([("348", 1, None)]) == "1d8292f174eb8816"
    assert rules.fingerprint([("348", 1, None, None)]) == "1d8292f174eb8816"
    assert rules.fingerprint([("348", 1, "ann"), ("349", -1, "ann")]) == "84b8e0d3e5927727"
    # sha256('[["348",1,"",1700000000]]')[:16]
    assert rules.fingerprint([("348", 1, None, 1_700_000_000)]) == "a71927f1375da106"
    assert rules.fingerprint([("348", 1, None, 0)]) == "fb058b40542d8bf2"
    assert rules.fingerprint([("348", 1, "ann", 1_700_000_000),
                              ("349", -1, "ann", None)]) == "32f955fd84244ee0"
