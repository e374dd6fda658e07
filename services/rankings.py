"""The orders /posts/top offers, shared by the gateway and the votes service:
their names, the cursor of a page, and what a post's creation time may be.

Each ranking is kept per bucket in a sorted set (contracts.rank_key) whose
score is the ranking's key negated, so that Redis's own order (score
ascending, then member bytewise) is "highest first, ties by postId". A key
is an integer that orders as the value does (``stored``): best times
10^15, the logarithm of controversial times 10^13, hot times 10^7 (reddit
rounds hot to 7 digits too), each rounded. The votes service's apply script
computes them; the functions below are the same arithmetic, used to check
that a page's counts agree with its order.
"""
import base64
import binascii
import datetime
import math
import re

from services.rules import ID_PATTERN

TOP, BEST, CONTROVERSIAL, HOT = "top", "best", "controversial", "hot"
SORTS = (TOP, BEST, CONTROVERSIAL, HOT)
DEFAULT_SORT = TOP

WILSON_Z = 1.281551565545  # 80% confidence, as reddit's _confidence
HOT_EPOCH = 1134028003     # reddit's: seconds since it, so the numbers stay small
HOT_SECONDS = 45000        # 12.5 hours of age weigh as much as a 10x score

# createdAt: seconds since the epoch, 1970 to the end of year 9999
MAX_CREATED_AT = 253402300799
_RFC3339 = re.compile(
    r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$", re.ASCII)
_EPOCH = re.compile(r"^\d{1,12}(\.\d{1,9})?$", re.ASCII)
CREATED_AT_RULE = ("must be an RFC 3339 date-time with a time zone, or seconds "
                   "since the epoch, from 1970 to 9999")


def best(up, down):
    """Lower bound of the Wilson score interval of the upvote share."""
    n = up + down
    if n == 0 or up == 0:
        return 0.0
    p = up / n
    z = WILSON_Z
    return (p + z * z / (2 * n) - z * math.sqrt((p * (1 - p) + z * z / (4 * n)) / n)) \
        / (1 + z * z / n)


def controversial(up, down):
    """(up + down) ** (min / max); 0 when either side is 0."""
    if up == 0 or down == 0:
        return 0.0
    return float(up + down) ** (min(up, down) / max(up, down))


def hot(up, down, created_at):
    """sign(s) * log10(max(|s|, 1)) + (createdAt - HOT_EPOCH) / 45000."""
    s = up - down
    order = math.log10(max(abs(s), 1))
    sign = 1 if s > 0 else -1 if s < 0 else 0
    return sign * order + (created_at - HOT_EPOCH) / HOT_SECONDS


def value(sort, up, down, created_at=0):
    """The ranking's value of a post (highest first)."""
    if sort == TOP:
        return float(up - down)
    if sort == BEST:
        return best(up, down)
    if sort == CONTROVERSIAL:
        return controversial(up, down)
    return hot(up, down, created_at)


# a key times its scale stays below 2**53, so it is exact in a double
SCALES = {BEST: 1e15, CONTROVERSIAL: 1e13, HOT: 1e7}


def stored(sort, up, down, created_at=0):
    """The score the post has in the ranking's sorted set."""
    if sort == TOP:
        return float(down - up)
    if sort == CONTROVERSIAL:
        # the logarithm of the value: the same order, and bounded
        number = 0.0 if up == 0 or down == 0 else \
            min(up, down) / max(up, down) * math.log(up + down)
    else:
        number = value(sort, up, down, created_at)
    return -float(math.floor(number * SCALES[sort] + 0.5)) or 0.0  # never -0.0


class BadCursor(ValueError):
    pass


def encode_cursor(sort, score, post_id):
    """An opaque cursor: the sort, and the (stored score, postId) of the last
    post of a page; the next page starts right after it."""
    text = "{}|{!r}|{}".format(sort, float(score), post_id)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_POST_ID = re.compile(ID_PATTERN)


def decode_cursor(cursor, sort):
    """(stored score, postId) from a cursor of ``sort``; BadCursor if it is
    not one."""
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise BadCursor("is not a cursor from this API")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        its_sort, score, post_id = text.split("|")
        score = float(score)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("is not a cursor from this API") from None
    if its_sort not in SORTS or not math.isfinite(score) or not _POST_ID.fullmatch(post_id):
        raise BadCursor("is not a cursor from this API")
    if its_sort != sort:
        raise BadCursor("is a cursor of sort={}, not {}".format(its_sort, sort))
    return score, post_id


def parse_created_at(value):
    """Seconds since the epoch (an int, fractions dropped) from an RFC 3339
    date-time or a number of seconds (a JSON number or its text); ValueError
    with CREATED_AT_RULE otherwise."""
    seconds = None
    if type(value) is int or type(value) is float:  # not bool
        seconds = value
    elif isinstance(value, str) and _EPOCH.fullmatch(value):
        seconds = float(value) if "." in value else int(value)
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        text = value.upper().replace(" ", "T")
        # fromisoformat takes at most 6 digits of a second
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            seconds = datetime.datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError):
            seconds = None
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_CREATED_AT:
        raise ValueError(CREATED_AT_RULE)
    return int(seconds)
