"""The gateway's VotePolicy from config: CREATED_AT_WINDOW and VOTE_BY_GET,
checked at start."""
import pytest
from nameko.exceptions import ConfigurationError

from services.gateway.policy import from_config


@pytest.mark.parametrize("config, window, by_get", [
    ({}, 300, True),
    ({"CREATED_AT_WINDOW": None, "VOTE_BY_GET": None}, 300, True),
    ({"CREATED_AT_WINDOW": 0, "VOTE_BY_GET": False}, 0, False),
    ({"CREATED_AT_WINDOW": 3600, "VOTE_BY_GET": "false"}, 3600, False),
    ({"VOTE_BY_GET": "no"}, 300, False),
    ({"VOTE_BY_GET": "TRUE"}, 300, True),
    ({"VOTE_BY_GET": ""}, 300, True),
])
def test_settings(config, window, by_get):
    policy = from_config(config)
    assert (policy.created_at_window, policy.vote_by_get) == (window, by_get)


@pytest.mark.parametrize("config, message", [
    ({"CREATED_AT_WINDOW": -1},
     "CREATED_AT_WINDOW must be an integer from 0 to 3600 (got -1)"),
    ({"CREATED_AT_WINDOW": 3601},
     "CREATED_AT_WINDOW must be an integer from 0 to 3600 (got 3601)"),
    ({"CREATED_AT_WINDOW": 1.5},
     "CREATED_AT_WINDOW must be an integer from 0 to 3600 (got 1.5)"),
    ({"VOTE_BY_GET": "sometimes"}, "VOTE_BY_GET must be true or false (got 'sometimes')"),
])
def test_bad_settings_stop_the_start(config, message):
    with pytest.raises(ConfigurationError) as error:
        from_config(config)
    assert str(error.value) == message


def test_the_window_bounds_a_clients_created_at_both_ways():
    policy = from_config({"CREATED_AT_WINDOW": 60})
    accepted = 1_700_000_000_999_999  # us
    assert [policy.created_at(given, accepted) for given in (
        0, 1_699_999_939, 1_699_999_940, 1_699_999_999, 1_700_000_000, 1_700_000_001,
        253_402_300_799)] == [
        1_699_999_940, 1_699_999_940, 1_699_999_940, 1_699_999_999, 1_700_000_000,
        1_700_000_000, 1_700_000_000]
