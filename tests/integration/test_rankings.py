"""The rankings of /posts/top (best, controversial, hot, top) with cursor
pagination, on one Redis and on a Redis Cluster: the apply script's values,
full walks over HTTP, a walk while votes arrive, and random vote sequences
(hypothesis).

Expected orders are computed here from the counts, with reddit's formulas
written out again (not imported from services.rankings)."""
import collections
import io
import itertools
import math
import random
import time
import uuid

import eventlet
import pytest
import redis
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import contracts, rules
from services.votes import migrate, schemas
from services.votes.store import Applied, Limits, VoteStorage, connect, counts_dict, scripts
from tests.conftest import make_vote
from tests.integration.test_pipeline import counts

pytestmark = pytest.mark.stores

SORTS = ("top", "best", "controversial", "hot")
OPERATOR_TOKEN = "s3cret-operator"
OPERATOR = {"Authorization": "Bearer " + OPERATOR_TOKEN}
Z = 1.281551565545
HOT_EPOCH = 1134028003


def value(sort, up, down, created):
    if sort == "top":
        return up - down
    if sort == "best":
        n = up + down
        if up == 0:
            return 0.0
        p = up / n
        return (p + Z * Z / (2 * n) - Z * math.sqrt((p * (1 - p) + Z * Z / (4 * n)) / n)) \
            / (1 + Z * Z / n)
    if sort == "controversial":
        return 0.0 if up == 0 or down == 0 else (up + down) ** (min(up, down) / max(up, down))
    s = up - down
    sign = (s > 0) - (s < 0)
    return sign * math.log10(max(abs(s), 1)) + (created - HOT_EPOCH) / 45000


# the precision the store keeps (README): values that agree to it are ties
DIGITS = {"top": None, "best": 12, "controversial": 9, "hot": 7}


def rounded(sort, up, down, created):
    worth = value(sort, up, down, created)
    if sort == "controversial":  # kept as its logarithm: relative precision
        return float("{:.9g}".format(worth))
    return worth if DIGITS[sort] is None else round(worth, DIGITS[sort])


def expected_order(sort, tally, created):
    """Post ids by the ranking, highest first, ties by postId."""
    return sorted(tally, key=lambda p: (-rounded(sort, *tally[p], created.get(p, 0)), p))


def stored_key(sort, up, down, created):
    """The score the store keeps: minus the value as an integer (README)."""
    worth = value(sort, up, down, created)
    if sort == "top":
        return -worth
    if sort == "controversial":
        worth = math.log(worth) if worth else 0.0
    return -math.floor(worth * {"best": 1e15, "controversial": 1e13, "hot": 1e7}[sort] + 0.5)


@pytest.fixture
def config(config):
    config["OPERATOR_TOKEN"] = OPERATOR_TOKEN  # PUT /posts/<postId>
    return config


@pytest.fixture
def storage(redis_uri):
    client = connect(redis_uri)
    yield VoteStorage(client, Limits(3600, 3600, 2.0, 3600))
    client.close()


def apply(storage, *votes):
    return storage.apply(uuid.uuid4().hex, [schemas.parse_vote(make_vote(**v)) for v in votes])


def walk(read_page, limit):
    """Every page of a ranking: [[postId, ...], ...]."""
    pages, after = [], None
    while True:
        posts, after = read_page(limit, after)
        pages.append([c["postId"] for c in posts])
        if after is None:
            return pages


def storage_walk(storage, sort, limit):
    def read(limit, after):
        return storage.page(sort, limit, schemas.parse_page(sort, after)[1])
    return [p for page in walk(read, limit) for p in page]


def test_stored_values_and_ties(storage, redis_client):
    created = 1_700_000_000
    plan = {"a": (0, 0), "b": (1, 0), "c": (0, 1), "d": (9, 1), "e": (500, 480),
            "f": (1, 1), "g": (1, 1), "h": (3, 1), "i": (1, 3)}
    for post, (up, down) in plan.items():
        votes = [{"postId": post, "score": 1, "createdAt": created}] * up
        votes += [{"postId": post, "score": -1, "createdAt": created}] * down
        if not votes:  # 0/0: a voter's vote taken back
            votes = [{"postId": post, "score": 1, "voterId": "v", "createdAt": created},
                     {"postId": post, "score": 0, "voterId": "v"}]
        apply(storage, *votes)
    for sort in SORTS:
        bucket_of = {p: contracts.bucket_of(p) for p in plan}
        got = {p: redis_client.zscore(contracts.rank_key(bucket_of[p], sort), p) for p in plan}
        want = {p: stored_key(sort, *plan[p], created) for p in plan}
        assert got == pytest.approx(want, abs=1), sort
        assert storage_walk(storage, sort, 2) == expected_order(sort, plan, {
            p: created for p in plan}), sort
    assert storage_walk(storage, "controversial", 3)[:4] == ["e", "f", "g", "h"]
    assert storage.page("best", 3)[0] == [counts("d", 9, 1), counts("e", 500, 480),
                                          counts("h", 3, 1)]


def created_of(redis_client, post):
    """A post's creation time as stored: a field of its hash."""
    return redis_client.hget(contracts.post_key(post), "createdAt")


def test_created_at_is_set_once_and_put_moves_hot(storage, redis_client):
    apply(storage, {"postId": "p", "score": 1, "createdAt": 1_700_000_000})
    apply(storage, {"postId": "p", "score": 1, "createdAt": 1_800_000_000})
    # the layout, pinned: the time is a field of the post's own hash, and
    # nothing is kept per bucket for it
    assert redis_client.hgetall("votes:{b1}:post:p") == {
        "upvote": "2", "downvote": "0", "createdAt": "1700000000"}
    assert redis_client.exists("votes:{b1}:created") == 0
    hot_key = contracts.rank_key(contracts.bucket_of("p"), "hot")
    assert redis_client.zscore(hot_key, "p") == stored_key("hot", 2, 0, 1_700_000_000)
    storage.set_created_at("p", 1_600_000_000)
    assert redis_client.hgetall("votes:{b1}:post:p") == {
        "upvote": "2", "downvote": "0", "createdAt": "1600000000"}
    assert redis_client.zscore(hot_key, "p") == stored_key("hot", 2, 0, 1_600_000_000)
    # a post with no votes: no time, no counts, no rank, no key at all (a
    # made-up id would leave one for good); its first vote sets its time
    keys = set(redis_client.keys("*"))
    assert storage.set_created_at("q", 1_650_000_000) is None
    assert set(redis_client.keys("*")) == keys
    assert storage.counts_many([("q", None)]) == [None]
    apply(storage, {"postId": "q", "score": -1, "createdAt": 1_690_000_000})
    assert created_of(redis_client, "q") == "1690000000"
    # without createdAt: the time of the first vote that counts
    before = int(time.time())
    apply(storage, {"postId": "r", "score": 1, "voterId": "v", "ts": time.time_ns() // 1000})
    assert before <= int(created_of(redis_client, "r")) <= time.time()
    # retracting nothing creates no post, and records no time
    apply(storage, {"postId": "s", "score": 0, "voterId": "v", "createdAt": 5})
    assert redis_client.exists(contracts.post_key("s")) == 0
    assert redis_client.exists("votes:{b11}:created") == 0


def test_a_creation_time_from_the_future_is_taken_as_now(storage, redis_client):
    # year 9999 would pin a post atop hot for good: past the allowed clock
    # skew, the vote's time is used instead, and for PUT the store's
    far = 253_402_300_799
    before = int(time.time())
    apply(storage, {"postId": "f", "score": 1, "createdAt": far,
                    "ts": time.time_ns() // 1000})
    assert before <= int(created_of(redis_client, "f")) <= time.time()
    apply(storage, {"postId": "g", "score": 1}, {"postId": "h", "score": 1})
    before = int(time.time())
    assert before <= storage.set_created_at("g", far) <= time.time()
    assert before <= int(created_of(redis_client, "g")) <= time.time()
    # a time within the skew is kept as given
    soon = int(time.time())
    assert storage.set_created_at("h", soon) == soon


def test_a_redelivered_event_moves_no_ranking(storage, redis_client):
    vote = schemas.parse_vote(make_vote(postId="p", createdAt=1_700_000_000))
    storage.apply("e1", [vote])
    before = {sort: storage.page(sort, 10) for sort in SORTS}
    storage.apply("e1", [vote])
    assert {sort: storage.page(sort, 10) for sort in SORTS} == before


def everything_deleted(redis_client):
    for key in list(redis_client.scan_iter(contracts.KEY_PREFIX + "*")):
        redis_client.delete(key)


VOTES = st.lists(st.tuples(
    st.sampled_from(["p0", "p1", "p2", "p3", "p4", "p5"]),
    st.sampled_from([1, -1, 0]),
    st.sampled_from([None, "ann", "bob", "cy"]),
), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(votes=VOTES, split=st.integers(1, 5), seed=st.integers(0, 1000))
def test_random_sequences_rank_as_their_final_counts(storage, redis_client, votes, split,
                                                     seed):
    """Votes with retractions and switches, in events applied in a shuffled
    order and some twice: every ranking is the order of the final counts."""
    everything_deleted(redis_client)
    ts = itertools.count(1_700_000_000_000_000)
    stamped = [make_vote(postId=post, score=score if voter else (score or 1), voterId=voter,
                         ts=next(ts), createdAt=1_700_000_000 + int(post[1]) * 5000)
               for post, score, voter in votes]
    # what the counts must be: the latest vote of each voter, every anonymous one
    latest, tally = {}, collections.defaultdict(lambda: [0, 0])
    for vote in stamped:
        if "voterId" in vote:
            latest[(vote["postId"], vote["voterId"])] = vote["score"]
        else:
            tally[vote["postId"]][0 if vote["score"] == 1 else 1] += 1
    for (post, _), score in latest.items():
        tally[post]  # a post a voter voted on exists, even if taken back
        if score:
            tally[post][0 if score == 1 else 1] += 1
    events = [(uuid.uuid4().hex, stamped[i:i + split]) for i in range(0, len(stamped), split)]
    order = random.Random(seed).sample(events, len(events)) + events[:2]
    for event_id, event_votes in order:
        storage.apply(event_id, [schemas.parse_vote(v) for v in event_votes])

    # a post whose only counted vote came after its retraction has no entry
    stored = {c["postId"]: (c["upvote"], c["downvote"]) for c in storage.page("top", 100)[0]}
    assert {p: tuple(t) for p, t in tally.items() if p in stored} == stored
    assert all(tally[p] == [0, 0] for p in set(tally) - set(stored))
    created = {p: 1_700_000_000 + int(p[1]) * 5000 for p in stored}
    for sort in SORTS:
        assert storage_walk(storage, sort, 2) == expected_order(sort, stored, created), sort


# --- over HTTP, both services ---

def wait_applied(redis_client, tally, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with redis_client.pipeline(transaction=False) as pipe:
            for post in tally:
                pipe.hmget(contracts.post_key(post), "upvote", "downvote")
            replies = pipe.execute()
        got = {p: (int(u or 0), int(d or 0)) for p, (u, d) in zip(tally, replies, strict=True)}
        if got == tally:
            return
        time.sleep(0.1)
    assert got == tally


def http_walk(web_session, sort, limit):
    def read(limit, after):
        params = {"sort": sort, "limit": limit}
        if after is not None:
            params["after"] = after
        response = web_session.get("/posts/top", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"posts", "next"}
        return body["posts"], body["next"]
    return walk(read, limit)


def put_created(web_session, created):
    """Each post's creation time set by the operator (a client's createdAt
    moves a post by CREATED_AT_WINDOW at most), as seconds and as RFC 3339."""
    for i, (post, stamp) in enumerate(sorted(created.items())):
        given = stamp if i % 2 else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
        response = web_session.put("/posts/" + post, json={"createdAt": given},
                                   headers=OPERATOR)
        assert (response.status_code, response.json()) == (
            200, {"postId": post, "createdAt": stamp})


def test_full_walks_of_2000_votes_over_200_posts(services, web_session, redis_client):
    rng = random.Random(17)
    posts = ["post-{:03d}".format(i) for i in range(200)]
    created = {p: rng.randrange(1_500_000_000, 1_790_000_000) for p in posts}  # all past
    tally = {p: [0, 0] for p in posts}
    votes = []
    for i in range(2000):
        post = posts[i % 200] if i < 200 else rng.choice(posts)
        # a post's share of upvotes varies, so that every ranking differs
        score = 1 if rng.random() < (int(post[-3:]) % 10) / 10 + 0.05 else -1
        tally[post][0 if score == 1 else 1] += 1
        votes.append({"postId": post, "score": score})
    for i in range(0, 2000, 500):
        response = web_session.post("/votes", json={"votes": votes[i:i + 500]})
        assert response.status_code == 202
    tally = {p: tuple(t) for p, t in tally.items()}
    wait_applied(redis_client, tally)
    put_created(web_session, created)

    for sort in SORTS:
        pages = http_walk(web_session, sort, 7)
        assert [len(page) for page in pages] == [7] * 28 + [4], sort
        walked = [p for page in pages for p in page]
        assert walked == expected_order(sort, tally, created), sort
    # the call as it was: no sort, no cursor, no next
    assert web_session.get("/posts/top?limit=2").json() == {"posts": [
        counts(p, *tally[p]) for p in expected_order("top", tally, created)[:2]]}


def test_a_walk_while_votes_arrive(services, web_session, redis_client):
    """A post that gets no vote during the walk is seen exactly once, in
    its place; only posts that moved may be seen twice or not at all."""
    rng = random.Random(7)
    posts = ["w{:03d}".format(i) for i in range(120)]
    movers = set(posts[::6])
    created = {p: rng.randrange(1_600_000_000, 1_700_000_000) for p in posts}
    votes = [{"postId": p, "score": rng.choice((1, 1, -1))}
             for p in posts for _ in range(rng.randrange(1, 8))]
    assert web_session.post("/votes", json={"votes": votes}).status_code == 202
    tally = collections.defaultdict(lambda: [0, 0])
    for vote in votes:
        tally[vote["postId"]][0 if vote["score"] == 1 else 1] += 1
    wait_applied(redis_client, {p: tuple(t) for p, t in tally.items()})
    put_created(web_session, created)

    base = web_session.base_url
    walking = [True]

    def vote_on_movers():
        with requests.Session() as session:
            while walking[0]:
                for post in sorted(movers):
                    session.get(base + "vote", params={
                        "postId": post, "score": rng.choice((1, -1, -1))}, timeout=10)
                eventlet.sleep(0.01)

    voter = eventlet.spawn(vote_on_movers)
    try:
        for sort in SORTS:
            walked = []
            for page in http_walk_slowly(web_session, sort, 7):
                walked += page
            stationary = [p for p in walked if p not in movers]
            assert collections.Counter(stationary) == collections.Counter(
                p for p in posts if p not in movers), sort
            assert stationary == [p for p in expected_order(sort, dict(tally), created)
                                  if p not in movers], sort
    finally:
        walking[0] = False
        voter.wait()


def http_walk_slowly(web_session, sort, limit):
    """Pages one by one, with a pause for votes to land between them."""
    after = None
    while True:
        params = {"sort": sort, "limit": limit}
        if after is not None:
            params["after"] = after
        body = web_session.get("/posts/top", params=params).json()
        yield [c["postId"] for c in body["posts"]]
        after = body["next"]
        if after is None:
            return
        eventlet.sleep(0.02)


def test_rankings_rebuilt_for_data_from_before_them(storage, redis_client, redis_uri,
                                                    tmp_path):
    """Counts written as before rankings (a post hash and the top only):
    ``migrate --rankings`` ranks them, created at the time of the run."""
    plan = {"a": (3, 1), "b": (1, 1), "c": (0, 2), "d": (9, 1), "e": (5, 5)}
    for post, (up, down) in plan.items():
        bucket = contracts.bucket_of(post)
        redis_client.hset(contracts.post_key(post), mapping={"upvote": up, "downvote": down})
        redis_client.zadd(contracts.top_key(bucket), {post: down - up})
    storage.set_created_at("d", 1_600_000_000)  # kept: it has a time already
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump({"REDIS_URIS": {"votes": redis_uri}}))
    before = int(time.time())
    out = io.StringIO()
    for _ in range(2):  # a second run changes nothing
        assert migrate.main(["--config", str(config_path), "--rankings"], out=out) == 0
    assert out.getvalue().splitlines()[-1] == "rankings: done, 5 posts"
    created = {p: int(created_of(redis_client, p)) for p in plan}
    assert created["d"] == 1_600_000_000
    assert all(before <= created[p] <= time.time() for p in "abce")
    for sort in SORTS:
        assert storage_walk(storage, sort, 2) == expected_order(sort, plan, created), sort


def _group_plan(rng, prefix, now):
    """Events over 15 posts: voters who switch and retract, out of order;
    keyed requests, replayed and conflicting; an event delivered twice.
    ``now`` (microseconds) is shared by both plans: a post's creation time
    is its first vote's second."""
    events = []
    for n in range(40):
        votes = []
        for _ in range(rng.randint(1, 12)):
            vote = {"postId": "{}{}".format(prefix, rng.randrange(15)),
                    "score": rng.choice((1, -1)), "ts": now - rng.randrange(10**6),
                    "voteId": "{}{}".format(prefix, uuid.UUID(int=rng.getrandbits(128)).hex)}
            if rng.random() < 0.5:
                vote["voterId"] = "v{}".format(rng.randrange(6))
                vote["score"] = rng.choice((1, -1, 0))
            votes.append(vote)
        if n % 9 == 4:  # a keyed request, then a replay and a conflict later
            key = rules.key_id(prefix + str(n))
            post = "{}{}".format(prefix, n % 15)
            keyed = {"postId": post, "score": 1, "ts": now, "voteId": key, "key": key,
                     "fp": rules.fingerprint([(post, 1, None)])}
            votes.append(keyed)
            later = dict(keyed, fp=rules.fingerprint([(post, -1, None)]), score=-1)
            events.append(("{}e{}".format(prefix, n), votes))
            events.append(("{}r{}".format(prefix, n), [keyed]))
            events.append(("{}c{}".format(prefix, n), [later]))
            continue
        events.append(("{}e{}".format(prefix, n), votes))
        if n % 7 == 3:
            events.append(events[-1])  # delivered twice
    return [(event_id, [schemas.parse_vote(v) for v in votes]) for event_id, votes in events]


def test_events_applied_in_groups_end_as_applied_one_by_one(storage):
    """The service applies concurrent workers' events in shared script
    calls (apply_many): every result, count, voter's vote and ranking is
    what applying them one at a time gives, duplicates in one group too."""
    now = int(time.time() * 1_000_000)
    one_by_one = _group_plan(random.Random(5), "s", now)
    grouped = _group_plan(random.Random(5), "g", now)
    alone = [tuple(storage.apply(event_id, votes)) for event_id, votes in one_by_one]
    together = []
    for first in range(0, len(grouped), 7):
        together += [tuple(a) for a in storage.apply_many(grouped[first:first + 7])]
    assert together == alone
    assert sum(a[0] for a in alone) > 100 and sum(a[1] for a in alone) > 0
    assert sum(a[2] for a in alone) > 0
    posts = ["{}".format(i) for i in range(15)]
    queries = [(prefix + post, voter) for post in posts
               for voter in (None, "v0", "v1", "v2", "v3", "v4", "v5")
               for prefix in ("s",)]
    mine = storage.counts_many(queries)
    theirs = storage.counts_many([("g" + q[1:], voter) for q, voter in queries])
    assert [c and dict(c, postId=c["postId"][1:]) for c in theirs] == \
        [c and dict(c, postId=c["postId"][1:]) for c in mine]
    assert any(c and c.get("myVote") for c in mine)
    for sort in ("top", "best", "controversial", "hot"):
        order = storage_walk(storage, sort, 7)
        assert [p[1:] for p in order if p[0] == "g"] == \
            [p[1:] for p in order if p[0] == "s"], sort


class _OtherScript(VoteStorage):
    """The store with a changed apply script (``script``)."""

    script = scripts.APPLY.text

    def _command(self, parts):
        command = super()._command(parts)
        return command._replace(args=("EVALSHA", scripts.sha(self.script),
                                      *command.args[2:]), script=self.script)


class _Poisoned(_OtherScript):
    """A script that fails on a part with the post 'poison', before the
    part's first write: an error it does not foresee, in a shared call."""

    script = scripts.APPLY.text.replace(
        "  local mark = KEYS[part[1]]\n",
        "  local mark = KEYS[part[1]]\n"
        "  for _, v in ipairs(part[3]) do if v[1] == 'poison' then error('poisoned') end end\n",
        1)


def test_an_event_the_script_cannot_apply_fails_alone(storage):
    """One event that breaks the shared call does not take the others of
    its group with it: they are applied each alone, and only it fails."""
    poisoned = _Poisoned(storage.client, storage.limits)
    assert "error('poisoned')" in poisoned.script
    good = [schemas.parse_vote(make_vote(postId="ok{}".format(n))) for n in range(6)]
    events = [("a", good[:3]), ("p", [good[3], schemas.parse_vote(make_vote(postId="poison"))]),
              ("b", good[4:])]
    results = poisoned.apply_group(events)
    assert [type(r) for r in results] == [Applied, redis.ResponseError, Applied]
    if not storage.writes.cluster:
        # one call, which failed and so wrote nothing: each innocent
        # event's Applied counts all of its votes (on a cluster the calls
        # of other buckets succeeded, and their votes are not told again)
        assert [tuple(results[0]), tuple(results[2])] == [(3, 0, 0), (2, 0, 0)]
    assert "poisoned" in str(results[1])
    innocent = [0, 1, 2, 4, 5]  # ok3 shares the poisoned event's fate
    assert storage.counts_many([("ok{}".format(n), None) for n in innocent]) == [
        {"postId": "ok{}".format(n), "upvote": 1, "downvote": 0, "score": 1}
        for n in innocent]
    # applied once: the whole group again changes nothing
    again = poisoned.apply_group(events)
    assert [tuple(r) for r in (again[0], again[2])] == [(0, 0, 0), (0, 0, 0)]
    assert storage.counts_many([("ok{}".format(n), None) for n in innocent]) == [
        {"postId": "ok{}".format(n), "upvote": 1, "downvote": 0, "score": 1}
        for n in innocent]


class _FailsPartWay(_OtherScript):
    """A script with a bug that strikes part way through a part: its
    mark, a keyed vote and a voter's vote worked out, then an error."""

    script = scripts.APPLY.text.replace(
        "      if fresh then\n        applied = applied + 1\n",
        "      if fresh then\n        if post_id == 'poison' then error('a bug') end\n"
        "        applied = applied + 1\n",
        1)


def test_a_script_error_part_way_writes_nothing(storage):
    """Redis does not undo what a script wrote before it stopped with an
    error. The apply script writes only once every vote is worked out, so
    a bug that strikes part way leaves no mark and no count, and the
    event, applied again, counts each of its votes once."""
    buggy = _FailsPartWay(storage.client, storage.limits)
    assert "error('a bug')" in buggy.script
    # one part: every post in the poison's bucket
    bucket = contracts.bucket_of("poison", storage.buckets)
    pw = [p for p in ("pw{}".format(n) for n in range(1000))
          if contracts.bucket_of(p, storage.buckets) == bucket][:4]
    key = rules.key_id("part-way")
    fp = rules.fingerprint([(pw[0], 1, None)])
    votes = [schemas.parse_vote(v) for v in (
        make_vote(postId=pw[0], voteId=key, key=key, fp=fp),
        make_vote(postId=pw[1], voterId="v1", score=-1),
        make_vote(postId=pw[2]),
        make_vote(postId="poison"),
        make_vote(postId=pw[3], voterId="v1", score=0))]
    posts = [(pw[0], None), (pw[1], "v1"), (pw[2], None), ("poison", None)]
    with pytest.raises(redis.ResponseError, match="a bug"):
        buggy.apply("part-way", votes)
    assert storage.counts_many(posts) == [None] * 4
    assert storage.client.exists(contracts.applied_key(
        bucket, "part-way")) == 0
    assert tuple(storage.apply("part-way", votes)) == (5, 0, 0)
    assert tuple(storage.apply("part-way", votes)) == (0, 0, 0)
    assert storage.counts_many(posts) == [
        {"postId": pw[0], "upvote": 1, "downvote": 0, "score": 1},
        {"postId": pw[1], "upvote": 0, "downvote": 1, "score": -1, "myVote": -1},
        {"postId": pw[2], "upvote": 1, "downvote": 0, "score": 1},
        {"postId": "poison", "upvote": 1, "downvote": 0, "score": 1}]


def test_counts_of_many_posts_across_buckets_in_query_order(storage, redis_client):
    """counts_many (one script call per bucket) reads what the post's hash
    and its voters' hash hold, for each query in its order."""
    rng = random.Random(11)
    for n in range(300):
        apply(storage, dict(postId="m{}".format(n % 40), score=rng.choice((1, -1)),
                            voterId=rng.choice((None, "v1", "v2"))))
    queries = [("m{}".format(rng.randrange(45)), rng.choice((None, "v1", "v2", "v3")))
               for _ in range(200)]
    got = storage.counts_many(queries)
    assert len({contracts.bucket_of(post) for post, _ in queries}) > 8
    for (post, voter), found in zip(queries, got, strict=True):
        stored = redis_client.hgetall(contracts.post_key(post))
        if not stored:
            assert found is None, post
            continue
        expected = counts_dict(post, stored["upvote"], stored["downvote"])
        if voter is not None:
            entry = redis_client.hget(contracts.voters_key(post), voter)
            expected["myVote"] = int(entry.rsplit(":", 1)[1]) if entry else 0
        assert found == expected
    assert sum(found is None for found in got) > 5
    assert sum(bool(found and found.get("myVote")) for found in got) > 20
    assert storage.counts_many([]) == []


def test_a_clients_created_at_cannot_bury_a_post(services, web_session, redis_client):
    """A first vote's createdAt comes from the client: 0 (1970) or any time
    long past once pinned its post to the bottom of hot for good. It moves
    the post back by CREATED_AT_WINDOW (300 s) at most."""
    window = 300
    # the control: a post the operator dates an hour back
    assert web_session.post("/vote", json={"postId": "old", "score": 1}).status_code == 202
    wait_applied(redis_client, {"old": (1, 0)})
    hour_ago = int(time.time()) - 3600
    assert web_session.put("/posts/old", json={"createdAt": hour_ago},
                           headers=OPERATOR).status_code == 200
    before = int(time.time())
    assert web_session.post("/votes", json={"votes": [
        {"postId": "zero", "score": 1, "voterId": "v", "createdAt": 0},
        {"postId": "past", "score": 1, "voterId": "v", "createdAt": "2001-09-09T01:46:40Z"},
        {"postId": "now", "score": 1, "voterId": "v"},
    ]}).status_code == 202
    assert web_session.get("/vote?postId=anon&score=1&createdAt=0").status_code == 202
    assert web_session.post("/vote", json={
        "postId": "anon-past", "score": 1, "createdAt": 1}).status_code == 202
    tally = {p: (1, 0) for p in ("old", "zero", "past", "now", "anon", "anon-past")}
    wait_applied(redis_client, tally)
    after = int(time.time())

    def stored(post):
        return int(created_of(redis_client, post))

    def accepted(post):  # the vote's accept time, in the voter's entry
        entry = redis_client.hget(contracts.post_keys(contracts.bucket_of(post), post)[1], "v")
        return int(entry.split(":")[0]) // 1_000_000

    created = {p: stored(p) for p in tally}
    assert created["old"] == hour_ago
    assert created["zero"] == accepted("zero") - window
    assert created["past"] == accepted("past") - window
    assert created["now"] == accepted("now")
    for post in ("anon", "anon-past"):
        assert before - window <= created[post] <= after - window, post
    walked = [p for page in http_walk(web_session, "hot", 10) for p in page]
    assert walked == expected_order("hot", tally, created)
    assert (walked[0], walked[-1]) == ("now", "old")


def legacy_post(redis_client, post, up, down, created):
    """A post as 1.0.0 wrote it: counts in its hash, its creation time in
    its bucket's creation-times hash, ranked."""
    bucket = contracts.bucket_of(post)
    redis_client.hset(contracts.post_key(post), mapping={"upvote": up, "downvote": down})
    redis_client.hset(contracts.created_key(bucket), post, created)
    for sort in SORTS:
        redis_client.zadd(contracts.rank_key(bucket, sort),
                          {post: stored_key(sort, up, down, created)})


def test_creation_times_written_before_they_moved_into_the_post(storage, redis_client,
                                                                redis_uri, tmp_path):
    """1.0.0 kept creation times in one hash per bucket, votes:{bN}:created:
    they are read from there while a post has none of its own, and moved
    into its hash by its next vote, by PUT, or by migrate --rankings."""
    plan = {"x": (3, 1, 1_600_000_000), "y": (1, 0, 1_700_000_000),
            "z": (0, 2, 1_650_000_000), "p": (5, 5, 1_500_000_000)}
    for post, (up, down, created) in plan.items():
        legacy_post(redis_client, post, up, down, created)
    tally = {p: plan[p][:2] for p in plan}
    created = {p: plan[p][2] for p in plan}
    # read as they are: hot agrees with the counts and the old times
    assert storage_walk(storage, "hot", 2) == expected_order("hot", tally, created)
    # a vote keeps the old time and moves it
    apply(storage, {"postId": "x", "score": 1, "createdAt": 1_800_000_000})
    tally["x"] = (4, 1)
    assert redis_client.hgetall("votes:{b3}:post:x") == {
        "upvote": "4", "downvote": "1", "createdAt": "1600000000"}
    assert redis_client.exists("votes:{b3}:created") == 0
    assert redis_client.zscore("votes:{b3}:rank:hot", "x") == stored_key(
        "hot", 4, 1, 1_600_000_000)
    # PUT sets the new time, and the old one goes
    assert storage.set_created_at("y", 1_750_000_000) == 1_750_000_000
    created["y"] = 1_750_000_000
    assert redis_client.hgetall("votes:{b5}:post:y") == {
        "upvote": "1", "downvote": "0", "createdAt": "1750000000"}
    assert redis_client.exists("votes:{b5}:created") == 0
    assert storage_walk(storage, "hot", 2) == expected_order("hot", tally, created)
    # migrate --rankings moves the rest
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump({"REDIS_URIS": {"votes": redis_uri}}))
    assert migrate.main(["--config", str(config_path), "--rankings"], out=io.StringIO()) == 0
    assert redis_client.hgetall("votes:{b15}:post:z") == {
        "upvote": "0", "downvote": "2", "createdAt": "1650000000"}
    assert redis_client.hgetall("votes:{b1}:post:p") == {
        "upvote": "5", "downvote": "5", "createdAt": "1500000000"}
    assert redis_client.keys("votes:*:created") == []
    for sort in SORTS:
        assert storage_walk(storage, sort, 2) == expected_order(sort, tally, created), sort


def test_a_creation_times_key_of_another_type_fails_the_call_before_any_write(
        storage, redis_client):
    """An old post's creation time is looked for while the call reads: a
    bucket's creation-times key holding something else stops it there,
    with nothing written (x29 is new, in the same bucket as x)."""
    redis_client.hset("votes:{b3}:post:x", mapping={"upvote": 1, "downvote": 0})
    redis_client.set("votes:{b3}:created", "something else")
    votes = [schemas.parse_vote(make_vote(postId=post)) for post in ("x29", "x")]
    for _ in range(2):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            storage.apply("e1", votes)
        assert redis_client.exists("votes:{b3}:applied:e1") == 0
        assert redis_client.exists("votes:{b3}:post:x29") == 0
        assert redis_client.hgetall("votes:{b3}:post:x") == {"upvote": "1", "downvote": "0"}
    redis_client.delete("votes:{b3}:created")
    assert tuple(storage.apply("e1", votes)) == (2, 0, 0)
    assert tuple(storage.apply("e1", votes)) == (0, 0, 0)
    assert storage.counts_many([("x29", None), ("x", None)]) == [
        counts("x29", 1, 0), counts("x", 2, 0)]
