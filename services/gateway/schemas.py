"""Validation of HTTP input.

Query and form fields arrive as strings, JSON bodies as typed values: both are
checked against the same strict models, so ``"1.0"``, ``"+1"``, ``true`` and
``"1"`` in JSON are all refused.
"""
import json
import re
from typing import Annotated, List, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services import contracts, rankings
from services.gateway.exceptions import ValidationError as InvalidRequest
from services.rules import IDEMPOTENCY_KEY_PATTERN, Identifier, Score

MAX_BATCH = 1000
MAX_TOP = contracts.MAX_TOP


ID_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ -"
MESSAGES = {
    "postId": ID_RULE,
    "voterId": ID_RULE,
    "score": "must be 1 or -1 (or 0, with a voterId, to retract)",
    "limit": "must be an integer from 1 to 100",
    "votes": "must be a list of 1 to 1000 votes",
    "createdAt": rankings.CREATED_AT_RULE,
}
RETRACT_RULE = "0 retracts a vote and needs a voterId"
SCORES = {"1": 1, "-1": -1, "0": 0}


def _created_at(value):
    try:
        return rankings.parse_created_at(value)
    except ValueError:
        raise PydanticCustomError("created_at", rankings.CREATED_AT_RULE) from None


# seconds since the epoch, from RFC 3339 or a number of seconds
CreatedAt = Annotated[int, BeforeValidator(_created_at)]


class Vote(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    postId: Identifier
    score: Score
    voterId: Optional[Identifier] = None
    createdAt: Optional[CreatedAt] = None

    @model_validator(mode="after")
    def _retraction_needs_voter(self):
        if self.score == 0 and self.voterId is None:
            raise ValueError(RETRACT_RULE)
        return self


class VoteBatch(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    votes: Annotated[List[Vote], Field(min_length=1, max_length=MAX_BATCH)]


class CountsQuery(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    postId: Identifier
    voterId: Optional[Identifier] = None


class TopQuery(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    limit: Annotated[int, Field(ge=1, le=MAX_TOP)] = 10


def _describe(exc):
    """One clear sentence for the first fault: '<field>: <rule>'."""
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = [part for part in error["loc"]]
    if error["type"] == "value_error":  # from a model validator
        loc.append("score")
    field = next((p for p in reversed(loc) if isinstance(p, str)), "body")
    where = "".join(
        "[{}]".format(p) if isinstance(p, int) else ("." + p if i else p)
        for i, p in enumerate(loc)
    ) or "body"
    if error["type"] == "missing":
        rule = "is required"
    elif error["type"] == "value_error":
        rule = RETRACT_RULE
    else:
        rule = MESSAGES.get(field, error["msg"])
    return "{}: {}".format(where, rule)


def _validate(model, data):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


def _single_values(multidict, fields):
    values = {}
    for field in fields:
        given = multidict.getlist(field)
        if len(given) > 1:
            raise InvalidRequest("{}: given more than once".format(field))
        if given:
            values[field] = given[0]
    return values


def _vote_strings(values):
    if "score" in values:
        values["score"] = SCORES.get(values["score"], values["score"])
    return values


def vote_from_query(multidict):
    """A vote from query or form fields (all strings)."""
    return _validate(Vote, _vote_strings(
        _single_values(multidict, ("postId", "score", "voterId", "createdAt"))))


# objects and arrays a JSON body may hold: a full batch has 1,002
MAX_JSON_CONTAINERS = 2 * MAX_BATCH + 16


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key)
    return document


def parse_json(data):
    """The JSON document in ``data``. Refused before parsing when it holds
    too many objects and arrays (``[{"":{}},...]`` would take some 30 times
    its size in memory); refused when an object names a key twice (json
    would keep the last one silently)."""
    if data.count(b"{") + data.count(b"[") > MAX_JSON_CONTAINERS:
        raise InvalidRequest("body: has more than {} objects and arrays".format(
            MAX_JSON_CONTAINERS))
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InvalidRequest("body: key {} is given more than once".format(
            json.dumps(str(exc)[:64]))) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("body: is not valid JSON") from None


def vote_from_json(document):
    if not isinstance(document, dict):
        raise InvalidRequest("body: must be a JSON object")
    return _validate(Vote, document)


def batch_from_json(document):
    if not isinstance(document, dict):
        raise InvalidRequest("body: must be a JSON object")
    return _validate(VoteBatch, document).votes


def counts_query(multidict):
    return _validate(CountsQuery, _single_values(multidict, ("postId", "voterId")))


def top_query(multidict):
    values = _single_values(multidict, ("limit",))
    if "limit" in values:
        text = values["limit"]
        # plain decimal digits only: no sign, spaces or '1e2'
        values["limit"] = int(text) if text.isascii() and text.isdigit() and len(text) < 5 else text
    return _validate(TopQuery, values).limit


def page_query(multidict):
    """(sort, after) of GET /posts/top, or None when it names neither (the
    call as it was before rankings: no ``next`` in the answer)."""
    values = _single_values(multidict, ("sort", "after"))
    if not values:
        return None
    sort = values.get("sort", rankings.DEFAULT_SORT)
    if sort not in rankings.SORTS:
        raise InvalidRequest("sort: must be one of " + ", ".join(rankings.SORTS))
    after = values.get("after")
    if after is not None:
        try:
            rankings.decode_cursor(after, sort)
        except rankings.BadCursor as exc:
            raise InvalidRequest("after: {}".format(exc)) from None
    return sort, after


class CreatedAtBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    createdAt: CreatedAt


def created_at_from_json(document):
    """The createdAt (seconds) of PUT /posts/<postId>."""
    if not isinstance(document, dict):
        raise InvalidRequest("body: must be a JSON object")
    return _validate(CreatedAtBody, document).createdAt


def post_id(value):
    return _validate(CountsQuery, {"postId": value}).postId


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY_ENVIRON = "HTTP_IDEMPOTENCY_KEY"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def idempotency_key(environ):
    """The request's Idempotency-Key, or None; a malformed one is refused.
    (WSGI joins a repeated header into one value, with commas.) Read from
    the WSGI environ: werkzeug's header lookup costs more than the rest of
    a vote's checks."""
    key = environ.get(_IDEMPOTENCY_KEY_ENVIRON)
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest("{}: must be 1-128 visible ASCII characters".format(
            IDEMPOTENCY_KEY_HEADER))
    return key


MAX_STREAM_POSTS = 100
STREAM_RULE = "follow 1 to {} postId, or top from 1 to {}".format(MAX_STREAM_POSTS, MAX_TOP)


def stream_query(multidict):
    """(post ids in order, without repeats; top N) of GET /stream."""
    post_ids = list(dict.fromkeys(multidict.getlist("postId")))
    if len(post_ids) > MAX_STREAM_POSTS:
        raise InvalidRequest("postId: at most {} posts".format(MAX_STREAM_POSTS))
    for post_id in post_ids:
        _validate(CountsQuery, {"postId": post_id})
    top = 0
    values = _single_values(multidict, ("top",))
    if "top" in values:
        text = values["top"]
        if not (text.isascii() and text.isdigit() and len(text) < 4
                and int(text) <= MAX_TOP):
            raise InvalidRequest("top: must be an integer from 0 to {}".format(MAX_TOP))
        top = int(text)
    if not post_ids and not top:
        raise InvalidRequest("stream: " + STREAM_RULE)
    return post_ids, top
