"""The shared checks behind every plugin's option validation."""

from __future__ import annotations

import pytest

from hookloop import PluginError
from hookloop.options import check_bool, check_choice, check_int, check_number


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: check_choice("p", "mode", "x", ("a", "b")),
            "p: option mode must be one of a, b, got 'x'",
        ),
        (lambda: check_bool("p", "final", 1), "p: option final must be true or false, got 1"),
        (
            lambda: check_int("p", "every", 0, minimum=1),
            "p: option every must be an integer >= 1, got 0",
        ),
        (
            lambda: check_int("p", "every", True, minimum=0),
            "p: option every must be an integer >= 0, got True",
        ),
        (
            lambda: check_int("p", "every", 2.0, minimum=0),
            "p: option every must be an integer >= 0, got 2.0",
        ),
        (lambda: check_number("p", "lr", -1, low=0), "p: option lr must be a number >= 0, got -1"),
        (
            lambda: check_number("p", "lr", 0, low=0, open_low=True),
            "p: option lr must be a number > 0, got 0",
        ),
        (
            lambda: check_number("p", "lr", "1", low=0),
            "p: option lr must be a number >= 0, got '1'",
        ),
        (
            lambda: check_number("p", "b", 1, low=0, high=1, open_high=True),
            "p: option b must be in [0, 1), got 1",
        ),
        (
            lambda: check_number("p", "b", 0, low=0, high=1, open_low=True),
            "p: option b must be in (0, 1], got 0",
        ),
    ],
)
def test_each_check_names_plugin_option_allowed_values_and_what_it_got(call, message):
    with pytest.raises(PluginError) as info:
        call()
    assert str(info.value) == message


def test_good_values_pass():
    check_choice("p", "mode", "a", ("a", "b"))
    check_bool("p", "final", False)
    check_int("p", "every", 1, minimum=1)
    check_number("p", "lr", 0.5, low=0, high=1, open_low=True, open_high=True)
    check_number("p", "lr", 3, low=0)
