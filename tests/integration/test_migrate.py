"""services.votes.migrate on a database written by the store before
buckets (tests/data/legacy_layout.json, see write_legacy_layout.py there),
to one Redis (the same database) and to a Redis Cluster (--from)."""
import io
import json
from pathlib import Path

import pytest
import yaml

from services import contracts
from services.votes import migrate, schemas
from services.votes.store import Limits, VoteStorage, connect
from tests.conftest import make_vote

pytestmark = pytest.mark.stores

LEGACY = json.loads((Path(__file__).parents[1] / "data" / "legacy_layout.json").read_text())
KEY_ID = "a" * 32


def counts(post, up, down, mine=None):
    body = {"postId": post, "upvote": up, "downvote": down, "score": up - down}
    if mine is not None:
        body["myVote"] = mine
    return body


@pytest.fixture
def legacy_uri(redis_store, redis_uri, request):
    """The old layout, on the test's database of the shared Redis."""
    single = request.getfixturevalue("single_redis_uri") if redis_store == "cluster" \
        else redis_uri
    client = connect(single)
    for item in LEGACY:
        key, value = item["key"], item["value"]
        if item["type"] == "string":
            client.set(key, value)
        elif item["type"] == "hash":
            client.hset(key, mapping=value)
        else:
            client.zadd(key, dict(value))
        if item["ttl"] > 0:
            client.expire(key, item["ttl"])
    client.close()
    return single


def run(config_path, *args):
    out = io.StringIO()
    assert migrate.main(["--config", str(config_path), *args], out=out) == 0
    return out.getvalue().splitlines()


def everything(client):
    """Every key of the database (or cluster), with its value."""
    read = {"string": client.get, "hash": client.hgetall,
            "zset": lambda key: client.zrange(key, 0, -1, withscores=True)}
    return {key: read[client.type(key)](key) for key in client.scan_iter("*")}


@pytest.fixture
def migrated(tmp_path, redis_uri, legacy_uri, redis_client):
    """(the migration's output lines, the config file, args of a rerun)"""
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump({"REDIS_URIS": {"votes": redis_uri}}))
    args = () if legacy_uri == redis_uri else ("--from", legacy_uri)
    return run(config_path, *args), config_path, args


def test_the_old_layout_reads_the_same_after_migrating(migrated, redis_uri, legacy_uri,
                                                        redis_client):
    lines, _, _ = migrated
    # every key but the leaderboard, which is rebuilt from the counts
    assert lines[-1] == "migrated: {} keys moved to 16 buckets".format(len(LEGACY) - 1)
    assert "posts: 5 keys moved, cursor done" in lines
    storage = VoteStorage(connect(redis_uri), Limits(60, 60, 2.0, 60))
    assert storage.counts_many([("348", "ann"), ("9", None), ("p-2", "ann"),
                                ("p-3", "bob"), ("p-4", None)]) == [
        counts("348", 2, 1, -1), counts("9", 1, 1), counts("p-2", 2, 0, 1),
        counts("p-3", 0, 0, 0), counts("p-4", 1, 0)]
    assert storage.top(3) == [counts("p-2", 2, 0), counts("348", 2, 1), counts("p-4", 1, 0)]
    assert 0 < redis_client.ttl(contracts.retracted_key("p-3")) <= 3600
    assert 86000 < redis_client.ttl(contracts.applied_key(15, "e1")) <= 86400
    legacy = [key for key in connect(legacy_uri).scan_iter("*")
              if not key.startswith(contracts.KEY_PREFIX + "{")
              and key != contracts.MIGRATED_KEY]
    # moved within one database; copied from another
    assert sorted(legacy) == ([] if legacy_uri == redis_uri
                              else sorted(item["key"] for item in LEGACY))

    # an old event redelivered, an old keyed request retried: nothing more
    again = schemas.parse_vote(make_vote(postId="348", voteId="e1-0"))
    assert tuple(storage.apply("e1", [again])) == (0, 0, 0)
    retry = [schemas.parse_vote(make_vote(postId=post, key=KEY_ID, fp="f" * 16,
                                          voteId=KEY_ID + suffix))
             for post, suffix in (("p-4", ""), ("9", "-1"))]
    assert tuple(storage.apply("e9", retry)) == (0, 2, 0)
    other = schemas.parse_vote(make_vote(postId="new", key=KEY_ID, fp="0" * 16))
    assert tuple(storage.apply("e10", [other])) == (0, 0, 1)
    assert storage.counts_many([("348", None), ("new", None)]) == [
        counts("348", 2, 1), None]


def test_a_second_run_changes_nothing(migrated, redis_client):
    _, config_path, args = migrated
    before = everything(redis_client)
    assert run(config_path, *args)[:5] == [
        "{}: done before".format(step) for step in
        ("retracted", "voters", "posts", "applied", "once")]
    assert everything(redis_client) == before
    run(config_path, "--again", *args)
    assert everything(redis_client) == before


class Crash(Exception):
    pass


STEPS = ("retracted", "voters", "posts", "applied", "once")  # in order


class CrashingOut(io.StringIO):
    """Output that fails at the first line of a step that has not ended
    (its cursor not yet "done"), as a run killed half way through a step
    would stop. Where that is depends on the order SCAN walks the keys in,
    which changes with each Redis server's hash seed: at a fixed line the
    crash would fall between steps on some servers."""

    def write(self, text):
        if text.startswith(STEPS) and not text.rstrip().endswith(
                "cursor " + migrate.DONE):
            raise Crash()
        return super().write(text)


def test_an_interrupted_run_goes_on_where_it_stopped(
        tmp_path, redis_uri, legacy_uri, redis_client, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 1)  # a SCAN step per key or so
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump({"REDIS_URIS": {"votes": redis_uri}}))
    args = () if legacy_uri == redis_uri else ("--from", legacy_uri)
    with pytest.raises(Crash):
        migrate.main(["--config", str(config_path), *args], out=CrashingOut())
    progress = redis_client.hgetall(contracts.MIGRATED_KEY)
    done = [step for step in STEPS if progress.get(step) == migrate.DONE]
    cut = STEPS[len(done)]  # the step the crash stopped
    assert done == list(STEPS[:len(done)]) and int(progress[cut]) > 0
    assert set(progress) == set(done) | {cut}
    lines = run(config_path, *args)
    assert lines[:len(done)] == ["{}: done before".format(step) for step in done]
    assert lines[len(done)].startswith(cut + ": ")
    assert lines[-1].startswith("migrated: ")
    storage = VoteStorage(connect(redis_uri), Limits(60, 60, 2.0, 60))
    assert storage.top(5) == [counts("p-2", 2, 0), counts("348", 2, 1), counts("p-4", 1, 0),
                              counts("9", 1, 1), counts("p-3", 0, 0)]
