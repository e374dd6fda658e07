"""Field rules shared by the gateway and the votes service: the one place
that says what a post id, a voter id and a score are."""
from typing import Annotated, Literal

from pydantic import BeforeValidator, StringConstraints

# opaque ids, never normalised: "0348" and "348" are two posts
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _int_only(value):
    # Literal[1] alone accepts True and 1.0 (they are == 1): turn anything
    # but a real int into text, which the literal then refuses
    return value if type(value) is int else str(value)


# 0 retracts a voter's vote; only valid together with a voterId
Score = Annotated[Literal[1, -1, 0], BeforeValidator(_int_only)]
