import pytest

from services.gateway.service import GatewayService
from services.votes.service import VotesService


@pytest.fixture
def services(runner_factory, config):
    """Both services in one runner, on the test's vhost and database."""
    runner = runner_factory(config, GatewayService, VotesService)
    runner.start()
    return runner
