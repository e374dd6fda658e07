"""Validation of what reaches the votes service.

Anyone on the broker can publish a ``vote_cast`` event, so the payload is
checked again here, whatever the gateway already checked.
"""
from typing import Annotated, List, Literal, Optional, Tuple

import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass

from services import rankings
from services.rankings import MAX_CREATED_AT
from services.rules import (
    FINGERPRINT_PATTERN,
    ID_MAX_LENGTH,
    ID_RUN,
    IDEMPOTENCY_KEY_PATTERN,
    KEY_ID_PATTERN,
    Fingerprint,
    Identifier,
    KeyId,
    Score,
)
from services.votes.exceptions import InvalidVote

MAX_EVENT_VOTES = 2000

_identifier = TypeAdapter(Identifier)


# strict, each field: a dataclass under strict=True takes only instances
_ID = Annotated[Identifier, Strict()]


@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="forbid"))
class Vote:
    # a slotted dataclass holds a vote in about a third of a model's memory
    # (the votes service holds up to MAX_WORKERS events of 2,000 votes)
    voteId: _ID
    postId: _ID
    score: Score  # (a literal takes no Strict: see rules.Score)
    voterId: Optional[_ID] = None
    # microseconds since the epoch at which the vote was accepted; the
    # store does not trust one ahead of its own clock by over MAX_CLOCK_SKEW
    ts: Annotated[int, Field(gt=0, lt=2 ** 53), Strict()]
    # with an Idempotency-Key: the key's id and the request's fingerprint
    key: Optional[Annotated[KeyId, Strict()]] = None
    fp: Optional[Annotated[Fingerprint, Strict()]] = None
    # the post's creation time (seconds since the epoch), if the client
    # gave one: kept only by the post's first vote that counts
    createdAt: Optional[Annotated[int, Field(ge=0, le=MAX_CREATED_AT), Strict()]] = None

    @model_validator(mode="after")
    def _retraction_needs_voter(self):
        if self.score == 0 and self.voterId is None:
            raise ValueError("score 0 (retraction) needs a voterId")
        if (self.key is None) != (self.fp is None):
            raise ValueError("key and fp go together")
        return self


def _list_only(value):
    # a list, as under strict=True, which would take a vote only as a Vote
    # instance: anything else turns into text, which a list refuses
    return value if type(value) is list else str(value)


class VoteCast(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: _ID
    votes: Annotated[List[Vote], Field(min_length=1, max_length=MAX_EVENT_VOTES),
                     BeforeValidator(_list_only)]


# The same rules for msgspec, which decodes a message's raw JSON into slotted
# structs at about a sixth of the cost of kombu's json.loads and pydantic
# (votes arrive tens of thousands a second). It only takes what it can:
# anything it refuses goes the usual way, decoded by kombu and checked by
# the pydantic models above, whose error texts name the fault. A test
# checks that it never takes what those refuse, nor reads it differently.
def _anchored(pattern):
    # pydantic's regexes are Rust's, where "$" is the end of the text; in
    # Python's re it also matches before a final newline
    return msgspec.Meta(pattern=r"\A" + pattern[1:-1] + r"\Z")


# an id's length here, its characters (rules.ID_RUN) for all ids of an event
# in one regex search: one search per field took more than all the decoding.
# The ids are joined with nothing between them: a separator would have to be
# kept out of the ids by another check ("1\n2" passed a join with "\n").
_RawID = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]


class RawVote(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Vote as msgspec reads it (see Vote for the fields)."""

    voteId: _RawID
    postId: _RawID
    score: Literal[1, -1, 0]
    voterId: Optional[_RawID] = None
    ts: Annotated[int, msgspec.Meta(gt=0, lt=2 ** 53)]
    key: Optional[Annotated[str, _anchored(KEY_ID_PATTERN)]] = None
    fp: Optional[Annotated[str, _anchored(FINGERPRINT_PATTERN)]] = None
    createdAt: Optional[Annotated[int, msgspec.Meta(ge=0, le=MAX_CREATED_AT)]] = None


class RawVoteCast(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: _RawID
    votes: Annotated[List[RawVote], msgspec.Meta(min_length=1, max_length=MAX_EVENT_VOTES)]


_raw_event = msgspec.json.Decoder(RawVoteCast)


def parse_event_json(body):
    """A vote_cast event from its raw JSON body (bytes), or None if msgspec
    does not take it: parse_event on the decoded body then says why."""
    try:
        event = _raw_event.decode(body)
    except msgspec.DecodeError:
        return None
    ids = [event.id]
    for vote in event.votes:
        ids.append(vote.voteId)
        ids.append(vote.postId)
        if vote.voterId is not None:
            ids.append(vote.voterId)
        # Vote's model validator
        if (vote.score == 0 and vote.voterId is None) or (vote.key is None) != (vote.fp is None):
            return None
    return event if ID_RUN.fullmatch("".join(ids)) else None


def _describe(exc):
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return "{}: {}".format(where, first["msg"])


def parse_event(payload):
    """Return a VoteCast, or raise InvalidVote naming the first fault."""
    try:
        return VoteCast.model_validate(payload)
    except ValidationError as exc:
        raise InvalidVote(_describe(exc)) from None


_vote = TypeAdapter(Vote)


def parse_vote(fields):
    try:
        return _vote.validate_python(fields)
    except ValidationError as exc:
        raise InvalidVote(_describe(exc)) from None


def parse_identifier(value, field):
    try:
        _identifier.validate_python(value, strict=True)
    except ValidationError:
        raise InvalidVote(
            "{}: must be 1-64 characters of A-Z a-z 0-9 _ -".format(field)
        ) from None
    return value


MAX_QUERIES = 1000
_queries = TypeAdapter(Annotated[
    List[Tuple[Identifier, Optional[Identifier]]],
    Field(max_length=MAX_QUERIES),
])


def parse_queries(queries):
    """[[post_id, voter_id or None], ...] as a list of tuples."""
    try:
        return _queries.validate_python(queries, strict=False)
    except ValidationError as exc:
        raise InvalidVote(_describe(exc)) from None


_idempotency_key = TypeAdapter(Annotated[str, StringConstraints(
    pattern=IDEMPOTENCY_KEY_PATTERN)])


def parse_idempotency_key(value):
    try:
        return _idempotency_key.validate_python(value, strict=True)
    except ValidationError:
        raise InvalidVote(
            "idempotency_key: must be 1-128 visible ASCII characters") from None


def parse_page(sort, after):
    """(sort, (stored score, postId) or None) of a page of a ranking."""
    sort = rankings.DEFAULT_SORT if sort is None else sort
    if sort not in rankings.SORTS:
        raise InvalidVote("sort: must be one of " + ", ".join(rankings.SORTS))
    if after is None:
        return sort, None
    try:
        return sort, rankings.decode_cursor(after, sort)
    except rankings.BadCursor as exc:
        raise InvalidVote("after: {}".format(exc)) from None


def parse_created_at(value):
    try:
        return rankings.parse_created_at(value)
    except ValueError as exc:
        raise InvalidVote("created_at: {}".format(exc)) from None
