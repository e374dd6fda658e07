"""services.rankings: each formula against values worked out by hand here,
the cursor, and createdAt."""
import math

import pytest

from services import rankings

Z = 1.281551565545
E = 1134028003  # reddit's epoch for hot


def wilson_centre_minus_margin(up, down):
    """The same bound written as centre minus margin (Wikipedia's form)."""
    n = up + down
    centre = (up + Z * Z / 2) / (n + Z * Z)
    return centre - Z * math.sqrt(n) / (n + Z * Z) * math.sqrt(up * down / n / n + Z * Z / (4 * n))


@pytest.mark.parametrize("up, down, expected", [
    (0, 0, 0.0),
    (0, 1, 0.0),
    (0, 10 ** 15, 0.0),
    # n = 1, p = 1: (1 + z²/2 - z * z/2) / (1 + z²)
    (1, 0, 1 / (1 + Z * Z)),
    # n = 2, p = 1/2: (1/2 + z²/4 - z * sqrt(1/8 + z²/16)) / (1 + z²/2)
    (1, 1, (0.5 + Z * Z / 4 - Z * math.sqrt(1 / 8 + Z * Z / 16)) / (1 + Z * Z / 2)),
    (9, 1, None),
    (500, 480, None),
])
def test_best(up, down, expected):
    if expected is None:
        expected = wilson_centre_minus_margin(up, down)
    assert rankings.best(up, down) == pytest.approx(expected, abs=1e-7)


def test_best_with_huge_counts_tends_to_the_share():
    assert rankings.best(10 ** 15, 0) == pytest.approx(1.0, abs=1e-12)
    assert rankings.best(10 ** 15, 10 ** 15) == pytest.approx(0.5, abs=1e-7)
    assert rankings.best(9, 1) == pytest.approx(0.71755570, abs=1e-8)
    assert rankings.best(9, 1) > rankings.best(500, 480)  # the example


@pytest.mark.parametrize("up, down, expected", [
    (0, 0, 0.0), (1, 0, 0.0), (0, 1, 0.0), (7, 0, 0.0),
    (1, 1, 2.0), (5, 5, 10.0), (3, 1, 4 ** (1 / 3)), (1, 3, 4 ** (1 / 3)),
    (10 ** 15, 10 ** 15, 2e15),
])
def test_controversial(up, down, expected):
    assert rankings.controversial(up, down) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("up, down, created, expected", [
    (0, 0, E, 0.0),
    (1, 0, E, 0.0),              # log10(1) = 0
    (0, 1, E + 45000, 1.0),      # score -1 weighs nothing; 45,000 s weigh 1
    (10, 0, E, 1.0),
    (0, 100, E, -2.0),
    (110, 10, E + 90000, 4.0),
    (10 ** 15, 0, E, 15.0),
    (0, 0, 0, -E / 45000),
])
def test_hot(up, down, created, expected):
    assert rankings.hot(up, down, created) == pytest.approx(expected, abs=1e-12)


def test_stored_keys_are_negated_integers_and_never_minus_zero():
    assert rankings.stored("top", 3, 1) == -2.0
    assert math.copysign(1, rankings.stored("best", 0, 0)) == 1.0
    assert rankings.stored("best", 1, 0) == -round(1e15 / (1 + Z * Z))
    assert rankings.stored("controversial", 1, 1) == -6931471805599  # ln 2, 10^13
    assert rankings.stored("controversial", 0, 5) == 0.0
    assert rankings.stored("hot", 10, 0, E) == -10_000_000
    assert rankings.stored("hot", 0, 100, E + 1) == 19_999_778  # -2 + 1/45000, 7 digits
    assert rankings.stored("controversial", 10 ** 15, 10 ** 15) == -round(
        math.log(2e15) * 1e13)
    for sort in rankings.SORTS:
        key = rankings.stored(sort, 10 ** 15, 3, 253402300799)
        assert key == int(key) and abs(key) < 2 ** 53


def test_stored_keys_order_as_the_values():
    """Over every count up to 15/15: a higher value never gets a lower key,
    and values apart by more than rounding get different keys."""
    grid = [(up, down) for up in range(16) for down in range(16)]
    for sort in ("best", "controversial", "hot"):
        worth = {c: rankings.value(sort, *c, E + 45000 * sum(c)) for c in grid}
        key = {c: -rankings.stored(sort, *c, E + 45000 * sum(c)) for c in grid}
        for a in grid:
            for b in grid:
                if worth[a] > worth[b] * (1 + 1e-9) + 1e-9:
                    assert key[a] > key[b], (sort, a, b)


def test_ties_sort_by_post_id_with_stored_scores():
    posts = {"b": (1, 1), "a": (1, 1), "c": (3, 0), "0": (0, 2)}
    for sort in rankings.SORTS:
        order = sorted(posts, key=lambda p: (rankings.stored(sort, *posts[p], E), p))
        assert order.index("a") + 1 == order.index("b"), sort


@pytest.mark.parametrize("sort, score, post_id", [
    ("top", -3.0, "348"), ("best", -0.1234567890123456789, "a_b-c"),
    ("hot", -470.00000000000006, "x" * 64), ("controversial", 0.0, "0"),
])
def test_a_cursor_round_trips_exactly(sort, score, post_id):
    cursor = rankings.encode_cursor(sort, score, post_id)
    assert rankings.decode_cursor(cursor, sort) == (score, post_id)


def cursor_of(text):
    import base64
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor, message", [
    ("", "is not a cursor from this API"),
    ("a b", "is not a cursor from this API"),
    ("x" * 201, "is not a cursor from this API"),
    ("abc", "is not a cursor from this API"),
    (cursor_of("top|nan|1"), "is not a cursor from this API"),
    (cursor_of("top|inf|1"), "is not a cursor from this API"),
    (cursor_of("top|1|a b"), "is not a cursor from this API"),
    (cursor_of("new|1|1"), "is not a cursor from this API"),
    (cursor_of("top|1|1|1"), "is not a cursor from this API"),
    (cursor_of("hot|1|1"), "is a cursor of sort=hot, not top"),
])
def test_bad_cursors(cursor, message):
    with pytest.raises(rankings.BadCursor) as error:
        rankings.decode_cursor(cursor, "top")
    assert str(error.value) == message


@pytest.mark.parametrize("value, seconds", [
    (0, 0), (1700000000, 1700000000), (1700000000.9, 1700000000), ("1700000000", 1700000000),
    ("1700000000.5", 1700000000), ("2023-11-14T22:13:20Z", 1700000000),
    ("2023-11-14t22:13:20.123456789z", 1700000000), ("2023-11-15T00:13:20+02:00", 1700000000),
    ("2023-11-14 22:13:20Z", 1700000000), ("9999-12-31T23:59:59Z", 253402300799),
])
def test_created_at_accepted(value, seconds):
    assert rankings.parse_created_at(value) == seconds


@pytest.mark.parametrize("value", [
    -1, 253402300800, True, None, [], float("nan"), float("inf"), "", "x", "-5", "1e9",
    "2023-11-14T22:13:20", "2023-11-14", "2023-13-14T22:13:20Z", "2023-11-14T22:13:60Z",
    "1969-12-31T23:59:59Z", "1970-01-01T00:00:00+01:00", "٣",
])
def test_created_at_refused(value):
    with pytest.raises(ValueError) as error:
        rankings.parse_created_at(value)
    assert str(error.value) == rankings.CREATED_AT_RULE
