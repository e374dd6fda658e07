"""The Redis that ``make run`` starts (scripts/servers.py) keeps the counts
across its own restart: votes applied by the votes service are there again
after Redis is shut down and started anew the same way."""
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import redis

from harness.process import ROOT, free_port, wait_until
from services.votes.service import VotesService

sys.path.insert(0, str(ROOT))
from scripts import servers  # noqa: E402


def start(port, data_dir):
    assert servers.start_redis(urlsplit("redis://127.0.0.1:{}/0".format(port)),
                               str(data_dir))
    client = redis.Redis(port=port, socket_connect_timeout=1)
    wait_until(lambda: servers.redis_answers("redis://127.0.0.1:{}/0".format(port)),
               30, "make run's redis-server to answer")
    return client


@pytest.fixture
def make_run_redis(tmp_path):
    port = free_port()
    data_dir = tmp_path / "redis"
    client = start(port, data_dir)
    yield port, data_dir
    try:
        redis.Redis(port=port).shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    client.close()


def test_command_keeps_an_append_only_file_in_the_project():
    command = servers.redis_command(6379)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--dir") + 1] == str(ROOT / ".data" / "redis")
    assert ".data/" in (ROOT / ".gitignore").read_text().split()


def test_counts_survive_a_restart_of_make_runs_redis(make_run_redis, config,
                                                     runner_factory):
    port, data_dir = make_run_redis
    config = dict(config, REDIS_URIS={"votes": "redis://127.0.0.1:{}/0".format(port)})
    runner = runner_factory(config, VotesService)
    runner.start()
    from nameko.standalone.rpc import ServiceRpcProxy
    with ServiceRpcProxy("votes", config) as votes:
        for _ in range(3):
            votes.vote("348", 1)
        votes.vote("348", -1, voter_id="ann")
    runner.stop()

    subprocess.run(["redis-cli", "-p", str(port), "shutdown"], check=False,
                   capture_output=True)
    wait_until(lambda: not servers.redis_answers(
        "redis://127.0.0.1:{}/0".format(port)), 30, "redis-server to stop")
    assert (data_dir / "appendonlydir").is_dir()
    start(port, data_dir)

    runner = runner_factory(config, VotesService)
    runner.start()
    with ServiceRpcProxy("votes", config) as votes:
        assert votes.get_counts("348") == {
            "postId": "348", "upvote": 3, "downvote": 1, "score": 2}
        assert votes.get_counts("348", voter_id="ann")["myVote"] == -1
