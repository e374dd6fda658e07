"""Field rules shared by the gateway and the votes service: the one place
that says what a post id, a voter id and a score are."""
import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, StringConstraints

# opaque ids, never normalised: "0348" and "348" are two posts
ID_CHARACTERS = "A-Za-z0-9_-"  # the body of a regex character class
ID_MAX_LENGTH = 64
# for pydantic, whose regexes are Rust's, where "$" is the end of the text;
# in Python's re it also matches before a final newline, so Python code
# checks ids with ID (fullmatch), never with this pattern
ID_PATTERN = r"^[{}]{{1,{}}}$".format(ID_CHARACTERS, ID_MAX_LENGTH)
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ID = re.compile(r"[{}]{{1,{}}}".format(ID_CHARACTERS, ID_MAX_LENGTH))
# any run of id characters: ids of checked lengths, joined with nothing
# between them, are all ids exactly when their join is one of these
ID_RUN = re.compile(r"[{}]*".format(ID_CHARACTERS))


def _int_only(value):
    # Literal[1] alone accepts True and 1.0 (they are == 1): turn anything
    # but a real int into text, which the literal then refuses
    return value if type(value) is int else str(value)


# 0 retracts a voter's vote; only valid together with a voterId
Score = Annotated[Literal[1, -1, 0], BeforeValidator(_int_only)]


# Idempotency-Key (IETF draft "The Idempotency-Key HTTP Header Field"):
# 1-128 visible ASCII characters, compared exactly
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
KEY_ID_PATTERN = r"^[0-9a-f]{32}$"
FINGERPRINT_PATTERN = r"^[0-9a-f]{16}$"
KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]
Fingerprint = Annotated[str, StringConstraints(pattern=FINGERPRINT_PATTERN)]


def key_id(idempotency_key):
    """The store's name for a key: 32 hex digits whatever the key holds.
    It is also the vote id answered for every try with that key."""
    return hashlib.sha256(idempotency_key.encode("ascii")).hexdigest()[:32]


def fingerprint(votes):
    """What a keyed request asked for, [(postId, score, voterId[,
    createdAt]), ...]: a later try with the same key and another
    fingerprint is a conflict. A createdAt (seconds) is in it only when
    given, so that the fingerprint of a request without one is what it
    was before createdAt counted (a key remembered then still matches)."""
    rows = []
    for post, score, voter, *created in votes:
        row = [post, score, voter or ""]
        if created and created[0] is not None:
            row.append(created[0])
        rows.append(row)
    canonical = json.dumps(rows, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
