"""The two readers of a vote_cast body agree on every input: the fast one
(msgspec, schemas.parse_event_json) and the one whose errors name the fault
(kombu's JSON decoding, then the pydantic models, schemas.parse_event).

Each generated body is given to both. For a body as the gateway writes it
(json.dumps) they must both take it and read it the same, or both refuse
it. For the same body rewritten byte by byte (escapes, spacing, repeated
keys, other spellings of numbers) the fast reader may also refuse what the
models take (such a body then goes the models' way), but never take what
they refuse, nor read it differently."""
import json

import kombu.utils.json
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services import rules
from services.votes import schemas
from services.votes.exceptions import InvalidVote
from services.votes.schemas import MAX_CREATED_AT
from tests.conftest import make_event, make_vote

FIELDS = ("voteId", "postId", "score", "voterId", "ts", "key", "fp", "createdAt")
ID_CHARACTERS = "ABCXYZabcxyz0189_-"

# any JSON value, small
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 64, 2 ** 64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)

# characters an id must not hold: controls (newlines first), space, the
# line and paragraph separators, non-ASCII letters and digits, lone
# surrogates, and ASCII punctuation
FOREIGN = st.one_of(
    st.just("\n"),
    st.sampled_from(["\r", "\r\n", "\x00", "\t", "\x0b", "\x0c", "\x1f", "\x7f",
                     " ", "\u00a0", "\u2028", "\u2029", "\ufeff", "\ud800", "\udfff",
                     "é", "ß", "\u0661", "\uff11", "İ", "K", "/", ".", ":", "|", "$",
                     "^", "\\", "\"", "+", "="]),
    st.characters(exclude_characters=ID_CHARACTERS, codec=None),
)
VALID_ID = st.text(alphabet=ID_CHARACTERS, min_size=1, max_size=64)


@st.composite
def flawed_ids(draw):
    """A valid id with a foreign character put in at its start, inside, or
    at its end; or cut to nothing, or stretched past 64."""
    text = draw(VALID_ID)
    kind = draw(st.integers(0, 5))
    if kind == 4:
        return ""
    if kind == 5:
        return text + "x" * (65 - len(text) + draw(st.integers(0, 3)))
    at = {0: 0, 1: len(text)}.get(kind) or draw(st.integers(0, len(text)))
    return text[:at] + draw(FOREIGN) + text[at:]


IDS = st.one_of(VALID_ID, flawed_ids(), JSON)
HEX = st.one_of(st.from_regex(r"\A[0-9a-f]{32}\Z"), st.from_regex(r"\A[0-9a-f]{16}\Z"),
                st.just("0" * 32 + "\n"), st.just("0" * 16 + "\n"), flawed_ids(), JSON)
NUMBERS = st.one_of(
    st.integers(-3, 2 ** 64),
    st.sampled_from([0, 1, 2 ** 53 - 1, 2 ** 53, MAX_CREATED_AT, MAX_CREATED_AT + 1,
                     1.0, 0.5, -0.0, 1e300, True, False, "1", "1.0", None]),
    st.floats(allow_nan=False, allow_infinity=False), JSON)
SCORES = st.one_of(st.sampled_from([1, -1, 0, 2, -2, 1.0, -1.0, 0.0, True, False, "1",
                                    "-1", "0", None, [1], {"score": 1}]), JSON)
VALUES = {"voteId": IDS, "postId": IDS, "voterId": IDS, "key": HEX, "fp": HEX,
          "score": SCORES, "ts": NUMBERS, "createdAt": NUMBERS}


@st.composite
def events(draw):
    """A valid event of 1-3 votes (with or without a voter, a key and a
    creation time), then up to three faults: a field set to another value,
    valid or not, of any JSON type; a field dropped; a field added; a vote
    replaced by a whole event or by another JSON value; the event itself
    made a list, or nested in one."""
    votes = []
    for _ in range(draw(st.integers(1, 3))):
        vote = make_vote(voteId=draw(VALID_ID), postId=draw(VALID_ID),
                         score=draw(st.sampled_from([1, -1])))
        if draw(st.booleans()):
            vote.update(voterId=draw(VALID_ID), score=draw(st.sampled_from([1, -1, 0])))
        if draw(st.booleans()):
            vote.update(key=draw(HEX.filter(lambda v: isinstance(v, str) and len(v) == 32)),
                        fp="f" * 16)
        if draw(st.booleans()):
            vote["createdAt"] = draw(st.integers(0, MAX_CREATED_AT))
        votes.append(vote)
    event = make_event(*votes)
    event["id"] = draw(VALID_ID)
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from([event] + votes))
        fault = draw(st.integers(0, 13))
        if fault == 0:
            target.pop(draw(st.sampled_from(list(target) or ["id"])), None)
        elif fault == 1:
            target[draw(st.sampled_from(["extra", "Score", "__type__", ""] + list(FIELDS)))] \
                = draw(JSON)
        elif fault == 2:
            event["votes"] = draw(st.sampled_from([[], {}, None, "votes", [votes[0]] * 2001,
                                                   [make_event(*votes)], [votes]]))
        elif fault == 3:
            index = draw(st.integers(0, len(votes) - 1))
            event["votes"] = list(votes)
            event["votes"][index] = draw(st.one_of(st.just(make_event(*votes)), JSON))
        elif fault == 4:
            return draw(st.sampled_from([[event], {"event": event}, votes]))
        elif fault <= 7:
            if target is event:
                event["id"] = draw(flawed_ids())
            else:
                target[draw(st.sampled_from(["voteId", "postId", "voterId"]))] = \
                    draw(flawed_ids())
        elif target is event:
            event[draw(st.sampled_from(["id", "votes"]))] = draw(IDS)
        else:
            field = draw(st.sampled_from(FIELDS))
            target[field] = draw(VALUES[field])
    return event


def typed(value):
    """A value with its type, so that 1 and True, or 1 and 1.0, differ."""
    return type(value).__name__, value


def read(event):
    return typed(event.id), [tuple(typed(getattr(vote, field)) for field in FIELDS)
                             for vote in event.votes]


def by_models(raw):
    """What the votes service makes of a body the fast reader leaves: kombu
    decodes it (an error dead-letters it), the models check it."""
    try:
        return read(schemas.parse_event(kombu.utils.json.loads(raw)))
    except (InvalidVote, ValueError, TypeError, RecursionError):
        return None


def by_fast_reader(raw):
    event = schemas.parse_event_json(raw)
    return None if event is None else read(event)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
@example(make_event(make_vote(postId="1\n2")))
@example(make_event(make_vote(voterId="a\nb", score=0)))
@example(make_event(make_vote(voteId="x\n")))
def test_both_readers_take_the_same_events_and_read_them_the_same(event):
    raw = json.dumps(event).encode()
    assert by_fast_reader(raw) == by_models(raw)


def respell(draw, raw):
    """The same document written otherwise: each of these leaves what it
    says unchanged (json.loads reads it the same), as far as JSON goes."""
    text = raw.decode()
    how = draw(st.integers(0, 6))
    if how == 0:  # non-ASCII characters as they are, not as \\u escapes
        # a lone surrogate has no UTF-8 form: its bytes are then invalid
        # UTF-8, which the fast reader must not take either
        return json.dumps(json.loads(text), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
    if how == 1:  # other whitespace between tokens
        return json.dumps(json.loads(text), indent=draw(st.sampled_from([None, 0, 2, "\t"])),
                          separators=draw(st.sampled_from([(",", ":"), (" , ", " : "),
                                                           (",\r\n", ":\t")]))).encode()
    if how == 2:  # a letter as an escape
        at = text.find('"', draw(st.integers(0, len(text))))
        if at > 0 and text[at + 1:at + 2].isalnum():
            return (text[:at + 1] + "\\u{:04x}".format(ord(text[at + 1])) + text[at + 2:]) \
                .encode()
        return raw
    if how == 3:  # a key given twice: the last one counts for both readers
        if text.startswith("{") and len(text) > 2:
            return ('{"id": ' + json.dumps(draw(JSON)) + ", " + text[1:]).encode()
        return raw
    if how == 4:  # numbers written as floats or with exponents
        number = draw(st.sampled_from(["1.0", "1e0", "10E-1", "-0", "-1.0", "1.5"]))
        return text.replace(": 1,", ": {},".format(number), 1).encode()
    if how == 5:  # a byte order mark, or trailing bytes
        return draw(st.sampled_from([b"\xef\xbb\xbf" + raw, raw + b"\n", raw + b" x",
                                     raw + b"\x00", raw[:-1]]))
    # a byte changed: perhaps not UTF-8 any more
    at = draw(st.integers(0, len(raw) - 1))
    return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fast_reader_never_takes_what_the_models_refuse(data):
    raw = respell(data.draw, json.dumps(data.draw(events())).encode())
    fast = by_fast_reader(raw)
    if fast is not None:
        assert fast == by_models(raw)


@given(st.one_of(VALID_ID, flawed_ids(), st.text(max_size=70)))
@settings(max_examples=2000)
@example("1\n2")
@example("1\n")
def test_every_reader_of_an_id_applies_one_rule(text):
    """The models' pattern (Rust's regex, in pydantic), rules.ID in Python,
    and the fast reader's length and characters take the same ids."""
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(rules.Identifier).validate_python(text)
        by_pydantic = True
    except ValidationError:
        by_pydantic = False
    by_python = rules.ID.fullmatch(text) is not None
    by_fast = 1 <= len(text) <= rules.ID_MAX_LENGTH and rules.ID_RUN.fullmatch(text) is not None
    assert by_pydantic == by_python == by_fast
