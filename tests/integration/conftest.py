import pytest

from services.gateway.service import GatewayService
from services.votes.service import VotesService
from tests.conftest import flush_cluster

STORES = ("single", "cluster")


def pytest_generate_tests(metafunc):
    """A module with ``pytestmark = pytest.mark.stores`` runs each of its
    tests on one Redis and on a Redis Cluster."""
    if metafunc.definition.get_closest_marker("stores") is not None:
        metafunc.parametrize("redis_store", STORES, indirect=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "stores: run on one Redis and on a Redis Cluster")


@pytest.fixture
def redis_store(request):
    return getattr(request, "param", "single")


@pytest.fixture
def redis_uri(request, redis_store):
    """The test's database: on the shared Redis, or the session's Redis
    Cluster, flushed before and after."""
    if redis_store == "single":
        yield request.getfixturevalue("single_redis_uri")
        return
    servers = request.getfixturevalue("redis_cluster")
    flush_cluster(servers)
    yield servers.uri
    flush_cluster(servers)


@pytest.fixture
def redis_client(request, redis_store, redis_client):
    if redis_store == "single":
        yield redis_client
        return
    client = request.getfixturevalue("redis_cluster").client()
    yield client
    client.close()


@pytest.fixture
def services(runner_factory, config):
    """Both services in one runner, on the test's vhost and database."""
    runner = runner_factory(config, GatewayService, VotesService)
    runner.start()
    return runner
