"""The README's `nameko shell` examples, run as a real subprocess."""
import os
import subprocess
import sys

import pytest
import yaml

from services.votes.service import VotesService

NAMEKO = os.path.join(os.path.dirname(sys.executable), "nameko")


@pytest.fixture
def config_file(tmp_path, config):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def shell(config_file, script):
    done = subprocess.run(
        [NAMEKO, "shell", "--config", config_file], input=script,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # the interactive console writes a '>>> ' prompt per line read
    return [line for line in done.stdout.replace(">>> ", "").splitlines() if line]


def test_readme_shell_examples(runner_factory, config, config_file):
    runner_factory(config, VotesService).start()

    out = shell(config_file, "\n".join([
        'print(n.rpc.votes.vote("348", 1))',
        'print(n.rpc.votes.vote("348", -1, voter_id="ann"))',
        'print(n.rpc.votes.get_counts("348"))',
        'print(n.rpc.votes.get_counts("348", voter_id="ann"))',
        'print(n.rpc.votes.top(1))',
        'print(n.rpc.votes.vote("349", 1, idempotency_key="op-2026-11-28-1"))',
        'print(n.rpc.votes.vote("349", 1, idempotency_key="op-2026-11-28-1"))',
    ]) + "\n")
    assert out == [
        "{'postId': '348', 'upvote': 1, 'downvote': 0, 'score': 1}",
        "{'postId': '348', 'upvote': 1, 'downvote': 1, 'score': 0, 'myVote': -1}",
        "{'postId': '348', 'upvote': 1, 'downvote': 1, 'score': 0}",
        "{'postId': '348', 'upvote': 1, 'downvote': 1, 'score': 0, 'myVote': -1}",
        "[{'postId': '348', 'upvote': 1, 'downvote': 1, 'score': 0}]",
        "{'postId': '349', 'upvote': 1, 'downvote': 0, 'score': 1}",
        "{'postId': '349', 'upvote': 1, 'downvote': 0, 'score': 1}",
    ]


def test_readme_shell_pipe_example(runner_factory, config, config_file):
    """echo 'print(n.rpc.votes.get_counts("348"))' | nameko shell --config ..."""
    runner_factory(config, VotesService).start()
    shell(config_file, 'n.rpc.votes.vote("348", 1)\n')

    out = shell(config_file, 'print(n.rpc.votes.get_counts("348"))\n')
    assert out == ["{'postId': '348', 'upvote': 1, 'downvote': 0, 'score': 1}"]


def test_shell_unknown_post_raises_not_found(runner_factory, config, config_file):
    runner_factory(config, VotesService).start()
    done = subprocess.run(
        [NAMEKO, "shell", "--config", config_file],
        input='n.rpc.votes.get_counts("nope")\n', capture_output=True, text=True,
        timeout=60,
    )
    assert "RemoteError: NotFound post nope has no votes" in done.stderr + done.stdout
