import json

import pytest
from werkzeug.datastructures import MultiDict

from services.gateway import schemas
from services.gateway.exceptions import ValidationError

ID_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ -"
SCORE_RULE = "must be 1 or -1 (or 0, with a voterId, to retract)"


@pytest.mark.parametrize("fields, expected", [
    ({"postId": "348", "score": "1"}, ("348", 1, None)),
    ({"postId": "348", "score": "-1"}, ("348", -1, None)),
    ({"postId": "0348", "score": "1"}, ("0348", 1, None)),
    ({"postId": "a" * 64, "score": "1"}, ("a" * 64, 1, None)),
    ({"postId": "A-z_9", "score": "-1", "voterId": "u-1"}, ("A-z_9", -1, "u-1")),
    ({"postId": "348", "score": "0", "voterId": "u1"}, ("348", 0, "u1")),
    ({"postId": "348", "score": "1", "extra": "ignored"}, ("348", 1, None)),
])
def test_query_votes_accepted(fields, expected):
    vote = schemas.vote_from_query(MultiDict(fields))
    assert (vote.postId, vote.score, vote.voterId) == expected


@pytest.mark.parametrize("fields, message", [
    ({}, "postId: is required"),
    ({"score": "1"}, "postId: is required"),
    ({"postId": "348"}, "score: is required"),
    ({"postId": "", "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "a" * 65, "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "34 8", "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "348\n", "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "3/48", "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "348é", "score": "1"}, "postId: " + ID_RULE),
    ({"postId": "348", "score": ""}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": "+1"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": "1.0"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": "2"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": "true"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": " 1"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": "0"}, "score: 0 retracts a vote and needs a voterId"),
    ({"postId": "348", "score": "1", "voterId": ""}, "voterId: " + ID_RULE),
    ({"postId": "348", "score": "1", "voterId": "a b"}, "voterId: " + ID_RULE),
    ([("postId", "1"), ("postId", "2"), ("score", "1")],
     "postId: given more than once"),
])
def test_query_votes_refused(fields, message):
    with pytest.raises(ValidationError) as error:
        schemas.vote_from_query(MultiDict(fields))
    assert str(error.value) == message


@pytest.mark.parametrize("document, expected", [
    ({"postId": "348", "score": 1}, ("348", 1, None)),
    ({"postId": "348", "score": -1, "voterId": "u1"}, ("348", -1, "u1")),
    ({"postId": "348", "score": 0, "voterId": "u1"}, ("348", 0, "u1")),
])
def test_json_votes_accepted(document, expected):
    vote = schemas.vote_from_json(document)
    assert (vote.postId, vote.score, vote.voterId) == expected


@pytest.mark.parametrize("document, message", [
    ({"postId": 348, "score": 1}, "postId: " + ID_RULE),
    ({"postId": "348", "score": "1"}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": True}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": 1.0}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": 2}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": None}, "score: " + SCORE_RULE),
    ({"postId": "348", "score": 10 ** 100}, "score: " + SCORE_RULE),
    ({"postId": ["348"], "score": 1}, "postId: " + ID_RULE),
    ({"postId": "348", "score": 0}, "score: 0 retracts a vote and needs a voterId"),
    ({"postId": "348", "score": 1, "voterId": 7}, "voterId: " + ID_RULE),
    ([], "body: must be a JSON object"),
    ("348", "body: must be a JSON object"),
    (None, "body: must be a JSON object"),
])
def test_json_votes_refused(document, message):
    with pytest.raises(ValidationError) as error:
        schemas.vote_from_json(document)
    assert str(error.value) == message


@pytest.mark.parametrize("data", [
    b"", b"{", b"{'postId': 1}", b"\xff\xfe", b"[" * 2000, b"NaN x",
])
def test_bad_json_refused(data):
    with pytest.raises(ValidationError) as error:
        schemas.parse_json(data)
    assert str(error.value) == "body: is not valid JSON"


@pytest.mark.parametrize("data, message", [
    (b'{"postId": "a", "score": 1, "postId": "b"}',
     'body: key "postId" is given more than once'),
    (b'{"votes": [{"postId": "a", "score": 1, "score": -1}]}',
     'body: key "score" is given more than once'),
    (b'[' + b'{"":{}},' * 1009 + b'{}]',  # 2,019 objects and arrays
     "body: has more than 2016 objects and arrays"),
    (b"[" * 100000, "body: has more than 2016 objects and arrays"),
])
def test_json_refused_before_it_costs(data, message):
    with pytest.raises(ValidationError) as error:
        schemas.parse_json(data)
    assert str(error.value) == message


def test_largest_batch_is_not_too_many_containers():
    batch = {"votes": [{"postId": str(i), "score": 1} for i in range(1000)]}
    assert schemas.parse_json(json.dumps(batch).encode()) == batch


def test_batch_accepted_in_order():
    votes = schemas.batch_from_json({"votes": [
        {"postId": "1", "score": 1},
        {"postId": "2", "score": -1, "voterId": "v"},
    ]})
    assert [(v.postId, v.score, v.voterId) for v in votes] == [
        ("1", 1, None), ("2", -1, "v")]


@pytest.mark.parametrize("document, message", [
    ({}, "votes: is required"),
    ({"votes": []}, "votes: must be a list of 1 to 1000 votes"),
    ({"votes": {"postId": "1"}}, "votes: must be a list of 1 to 1000 votes"),
    ({"votes": [{"postId": "1", "score": 1}] * 1001},
     "votes: must be a list of 1 to 1000 votes"),
    ({"votes": [{"postId": "1", "score": 1}, {"postId": "1", "score": 5}]},
     "votes[1].score: " + SCORE_RULE),
    ({"votes": [{"postId": "1", "score": 1}, {"score": 1}]},
     "votes[1].postId: is required"),
    ({"votes": [{"postId": "1", "score": 0}]},
     "votes[0].score: 0 retracts a vote and needs a voterId"),
    ({"votes": [7]}, "votes[0]: must be a list of 1 to 1000 votes"),
])
def test_batch_refused_whole(document, message):
    with pytest.raises(ValidationError) as error:
        schemas.batch_from_json(document)
    assert str(error.value) == message


@pytest.mark.parametrize("fields, expected", [
    ({"postId": "348"}, ("348", None)),
    ({"postId": "348", "voterId": "u1"}, ("348", "u1")),
])
def test_counts_query_accepted(fields, expected):
    query = schemas.counts_query(MultiDict(fields))
    assert (query.postId, query.voterId) == expected


@pytest.mark.parametrize("fields, message", [
    ({}, "postId: is required"),
    ({"postId": "x" * 65}, "postId: " + ID_RULE),
    ({"postId": "348", "voterId": "?"}, "voterId: " + ID_RULE),
])
def test_counts_query_refused(fields, message):
    with pytest.raises(ValidationError) as error:
        schemas.counts_query(MultiDict(fields))
    assert str(error.value) == message


@pytest.mark.parametrize("fields, expected", [
    ({}, 10), ({"limit": "1"}, 1), ({"limit": "100"}, 100), ({"limit": "007"}, 7),
])
def test_top_limit_accepted(fields, expected):
    assert schemas.top_query(MultiDict(fields)) == expected


@pytest.mark.parametrize("value", ["0", "101", "-1", "+5", "1e2", "5.0", "", "x", "٣", "99999999"])
def test_top_limit_refused(value):
    with pytest.raises(ValidationError) as error:
        schemas.top_query(MultiDict({"limit": value}))
    assert str(error.value) == "limit: must be an integer from 1 to 100"


@pytest.mark.parametrize("bad", ["1\n2", "12\n", "\n12", "1\r\n2", "1\x002", "1\u20282",
                                 "١٢", "a" * 65, ""])
def test_an_id_with_a_newline_or_any_other_foreign_character_is_refused_everywhere(bad):
    """The gateway's readers of an id follow rules.ID_PATTERN through
    pydantic, whose "$" is the end of the text (not before a final newline)."""
    readers = [
        ("postId", lambda: schemas.vote_from_query(MultiDict({"postId": bad, "score": "1"}))),
        ("voterId", lambda: schemas.vote_from_query(MultiDict({"postId": "1", "score": "0",
                                                              "voterId": bad}))),
        ("postId", lambda: schemas.vote_from_json({"postId": bad, "score": 1})),
        ("votes[1].postId", lambda: schemas.batch_from_json(
            {"votes": [{"postId": "1", "score": 1}, {"postId": bad, "score": 1}]})),
        ("postId", lambda: schemas.counts_query(MultiDict({"postId": bad}))),
        ("voterId", lambda: schemas.counts_query(MultiDict({"postId": "1", "voterId": bad}))),
        ("postId", lambda: schemas.post_id(bad)),
        ("postId", lambda: schemas.stream_query(MultiDict([("postId", "1"), ("postId", bad)]))),
    ]
    for field, read in readers:
        with pytest.raises(ValidationError) as refused:
            read()
        assert str(refused.value) == "{}: {}".format(field, ID_RULE)
