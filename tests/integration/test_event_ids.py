"""An id that breaks the rule, published straight to the broker as JSON
(the body the votes service reads with its fast reader first), is
dead-lettered with the models' reason and changes nothing; the rankings
then hold only ids the API takes back in its own cursors. Real RabbitMQ,
Redis and both services."""
import json

import pytest
from kombu import Connection, Exchange, Producer

from services import contracts
from tests.conftest import make_event, make_vote
from tests.integration.test_pipeline import counts, wait_for_counts
from tests.interface.test_votes_service import dead_letters, queue_depth

PATTERN_REASON = ("invalid payload: votes.0.{}: String should match pattern "
                  "'^[A-Za-z0-9_-]{{1,64}}$'")


def publish(amqp_uri, event):
    with Connection(amqp_uri) as connection:
        Producer(connection.channel()).publish(
            json.dumps(event).encode(),
            exchange=Exchange(contracts.EVENTS_EXCHANGE, type="topic", durable=True),
            routing_key=contracts.VOTE_CAST, content_type="application/json",
            content_encoding="utf-8")


def walk(web_session, sort):
    """Every post of a ranking, a page of one at a time, by the API's own
    cursors; each page must be answered."""
    posts, after = [], None
    while True:
        params = {"sort": sort, "limit": 1}
        if after is not None:
            params["after"] = after
        response = web_session.get("/posts/top", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        posts += [post["postId"] for post in body["posts"]]
        after = body["next"]
        if after is None:
            return posts


@pytest.mark.parametrize("field, bad", [
    ("postId", "1\n2"), ("postId", "1\r\n2"), ("postId", "12\n"),
    ("voterId", "ann\nbob"), ("voteId", "a\nb"),
])
def test_an_id_with_a_newline_is_dead_lettered_and_changes_nothing(
        services, web_session, config, redis_client, field, bad):
    amqp_uri = config["AMQP_URI"]
    vote = make_vote(postId="2", voterId="ann", score=1)
    vote[field] = bad
    event = make_event(vote)
    publish(amqp_uri, event)
    (message,) = dead_letters(amqp_uri, 1)
    assert message.headers["x-dead-letter-reason"] == PATTERN_REASON.format(field)
    assert json.loads(message.body) == event

    # then a good vote: the only post there is, and every ranking walks
    assert web_session.get("/vote?postId=1&score=1").status_code == 202
    assert wait_for_counts(web_session, {"1": counts("1", 1, 0)}) == {"1": counts("1", 1, 0)}
    assert redis_client.keys(contracts.POST_KEY_PATTERN) == [contracts.post_key("1")]
    assert web_session.get("/vote-counts?postId=2").status_code == 404
    for sort in ("top", "best", "controversial", "hot"):
        assert walk(web_session, sort) == ["1"]
    assert queue_depth(amqp_uri, contracts.VOTES_QUEUE) == 0


def test_a_batch_with_one_bad_id_is_refused_whole(services, web_session, config,
                                                 redis_client):
    amqp_uri = config["AMQP_URI"]
    event = make_event(make_vote(postId="1"), make_vote(postId="3"),
                       make_vote(postId="1\n2"))
    publish(amqp_uri, event)
    (message,) = dead_letters(amqp_uri, 1)
    assert message.headers["x-dead-letter-reason"] == PATTERN_REASON.replace(
        "votes.0", "votes.2").format("postId")
    assert redis_client.keys(contracts.POST_KEY_PATTERN) == []
    assert web_session.get("/posts/top").json() == {"posts": []}
