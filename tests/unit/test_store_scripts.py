"""The store's Lua scripts (services/votes/store/scripts/*.lua): each one
compiles in the real Redis, each is called with the keys and arguments it
reads, none is left in a .py file; and the store is reached by the
container's other extensions through its provider, not by a search."""
import json
import re
from pathlib import Path

import pytest
import redis
from nameko.testing.utils import get_extension

from services import rankings
from services.gateway import rate_limits
from services.votes import dead_letters
from services.votes.feed import CountsFeed
from services.votes.schemas import parse_event
from services.votes.service import VotesService
from services.votes.store import VoteStore, layout, provider, scripts, storage_of
from tests.conftest import make_event

SERVICES = Path(__file__).resolve().parents[2] / "services"


def test_every_lua_file_is_in_a_script():
    files = {path.name for path in scripts.FOLDER.glob("*.lua")}
    used = {name for script in scripts.ALL for name in script.files}
    assert files == used
    for script in scripts.ALL:
        assert script.text == "".join(
            (scripts.FOLDER / name).read_text() for name in script.files)
        assert script.sha == scripts.sha(script.text)


@pytest.mark.parametrize("script", scripts.ALL, ids=lambda s: s.name)
def test_each_script_compiles_in_redis(redis_client, script):
    """SCRIPT LOAD compiles the script (Redis refuses one that does not)
    and gives back the SHA-1 the store calls it by."""
    assert redis_client.script_load(script.text) == script.sha


def test_script_load_refuses_a_script_that_does_not_compile(redis_client):
    """What the test above relies on."""
    with pytest.raises(redis.ResponseError, match="compil|Error"):
        redis_client.script_load(scripts.APPLY.text + "\nend\n")


def _indexes(name, text):
    return {int(n) for n in re.findall(r"\b{}\[(\d+)\]".format(name), text)}


@pytest.mark.parametrize("script", scripts.ALL, ids=lambda s: s.name)
def test_each_script_reads_the_arguments_its_caller_gives(script):
    """A script's own file reads ARGV[1] .. ARGV[n] for its n declared
    arguments (rankings.lua reads the six after them), and KEYS[1] ..
    KEYS[k] when it names a fixed number of keys; evalsha and eval refuse
    a caller that gives another number."""
    own = (scripts.FOLDER / script.files[-1]).read_text()
    if script.args is not None:
        assert _indexes("ARGV", own) == set(range(1, len(script.args) + 1))
        with pytest.raises(TypeError):
            script.evalsha(["k"] * (script.keys or 1), *range(len(script.args) + 1))
    if script.keys is not None:
        assert _indexes("KEYS", own) == set(range(1, script.keys + 1))
        with pytest.raises(TypeError):
            script.eval(["k"] * (script.keys + 1), *range(len(script.args)))
    command = script.evalsha(["k"] * (script.keys or 1), *range(len(script.args or ())))
    assert command[:3] == ("EVALSHA", script.sha, script.keys or 1)
    assert command[-6:] == scripts.RANKING_ARGS if script.ranks else True


def test_the_rankings_constants_go_as_arguments(redis_client):
    """The rebuild script ranks with services/rankings.py's constants,
    given as its last arguments; without them it refuses, writing nothing."""
    bucket = 3
    keys = layout.rebuild_keys(bucket, "p")
    redis_client.hset(keys[0], mapping={"upvote": 7, "downvote": 2})
    created = rankings.HOT_EPOCH + 12345
    assert redis_client.execute_command(*scripts.REBUILD.eval(keys, "p", created)) == 1
    for sort, key in zip(rankings.SORTS, keys[1:5], strict=True):
        assert redis_client.zscore(key, "p") == rankings.stored(sort, 7, 2, created), sort
    assert redis_client.hgetall(keys[0]) == {
        "upvote": "7", "downvote": "2", "createdAt": str(created)}
    assert redis_client.exists(keys[5]) == 0
    redis_client.delete(*keys[1:])
    without = scripts.REBUILD.eval(keys, "p", created)[:-len(scripts.RANKING_ARGS)]
    with pytest.raises(redis.ResponseError, match="rankings: bad arguments"):
        redis_client.execute_command(*without)
    assert redis_client.exists(*keys[1:]) == 0


def test_no_lua_in_any_service_python():
    """Every script is a .lua file, read once: none in a Python string."""
    lua = re.compile(r"redis\.call\(|redis\.pcall\(|\bcjson\.|\blocal\s+\w+\s*=|\bKEYS\[|\bARGV\[")
    for path in SERVICES.rglob("*.py"):
        assert not lua.search(path.read_text()), path


def test_the_rate_limit_script_compiles_in_redis_and_is_read_from_its_file(redis_client):
    path = SERVICES / "gateway" / "scripts" / "rate_limits.lua"
    assert rate_limits.CHECK_SCRIPT == path.read_text()
    assert redis_client.script_load(rate_limits.CHECK_SCRIPT) == scripts.sha(
        rate_limits.CHECK_SCRIPT)


def test_the_rate_limit_script_reads_the_arguments_the_limiter_gives(redis_client):
    """Two limits of one check: ARGV[1] the checks, ARGV[2] and ARGV[3] the
    lease share and most; the first call counts both."""
    keys = ["rl:test:a", "rl:test:b"]
    redis_client.delete(*keys)
    check = json.dumps([[[1, 5, 60000, 2], [2, 5, 60000, 2]]])
    out = redis_client.eval(rate_limits.CHECK_SCRIPT, 2, *keys, check,
                            rate_limits.LEASE_SHARE, rate_limits.MAX_LEASE)
    assert out[:3] == [0, 0, 0]
    assert [redis_client.get(key) for key in keys] == ["2", "2"]
    redis_client.delete(*keys)


def test_the_feed_and_the_dead_letter_headers_reach_the_store_through_it(
        container_factory, redis_uri):
    """The store's setup names it on its container (storage_of); the counts
    feed and the dead-letter headers read it there. Nothing in the votes
    service searches the container's extensions for it."""
    container = container_factory(VotesService, {
        "AMQP_URI": "memory://", "REDIS_URIS": {"votes": redis_uri}})
    store = get_extension(container, VoteStore)
    assert storage_of(container) is None
    store.setup()
    assert getattr(container, provider.CONTAINER_ATTRIBUTE) is store
    assert storage_of(container) is None  # not connected yet

    class Storage:
        def counts_many(self, queries):
            return [("counts", post_id) for post_id, _ in queries]

        def top(self, limit, reads):
            return ("top", limit, reads)

        def seal_marks(self, event_id, post_ids):
            return event_id == "e1"

    store.storage = Storage()
    feed = get_extension(container, CountsFeed)
    assert feed.read_counts(["a", "b"]) == [("counts", "a"), ("counts", "b")]
    assert feed.read_top() == ("top", 100, 1)
    event = parse_event(make_event(event_id="e1"))
    assert dead_letters.failed_event_headers(container, event) == {
        dead_letters.EVENT_ID_HEADER: "e1",
        dead_letters.APPLIED_MARK_HEADER: dead_letters.MARK_PRESENT}
    # a second store in one container is refused
    other = VoteStore()
    other.container = container
    with pytest.raises(RuntimeError, match="one VoteStore"):
        other.setup()
    for path in (SERVICES / "votes").rglob("*.py"):
        assert "container.dependencies" not in path.read_text(), path
