"""Checks for plugin options, so every plugin rejects a bad value with the same kind of line:
`<plugin>: option <name> must be <what is allowed>, got <value>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from hookloop.errors import PluginError
from hookloop.filecheck import short

__all__ = ["check_bool", "check_choice", "check_int", "check_number"]


def _fail(plugin: str, option: str, allowed: str, value: Any) -> PluginError:
    return PluginError(f"{plugin}: option {option} must be {allowed}, got {short(value)}")


def check_choice(plugin: str, option: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a PluginError unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise _fail(plugin, option, f"one of {', '.join(map(str, choices))}", value)


def check_bool(plugin: str, option: str, value: Any) -> None:
    """Raise a PluginError unless `value` is True or False."""
    if not isinstance(value, bool):
        raise _fail(plugin, option, "true or false", value)


def check_int(plugin: str, option: str, value: Any, *, minimum: int) -> None:
    """Raise a PluginError unless `value` is an int (not a bool) of at least `minimum` (and
    at most 2**63 - 1, so it fits every counter it is compared with)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(plugin, option, f"an integer >= {minimum}", value)
    if value >= 2**63:
        raise _fail(plugin, option, "an integer below 2**63", value)


def check_number(
    plugin: str,
    option: str,
    value: Any,
    *,
    low: float,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Raise a PluginError unless `value` is an int or float (not a bool) in the interval
    from `low` to `high` (no upper bound when None); `open_*` excludes that end."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > low if open_low else value >= low)
    if high is not None:
        ok = ok and (value < high if open_high else value <= high)
    if not ok:
        if high is None:
            allowed = f"a number {'>' if open_low else '>='} {low}"
        else:
            allowed = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise _fail(plugin, option, allowed, value)
