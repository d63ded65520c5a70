"""Checks of configuration values shared by the config dataclasses: each raises ValueError
naming the field, what was expected and what came."""

from __future__ import annotations

import math


def check_int(name: str, value: object, minimum: int) -> None:
    """`value` must be an int (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def check_number(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, *, open_low=False
) -> None:
    """`value` must be a finite real number in [low, high] ((low, high] with `open_low`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}: expected a finite number in {bounds}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    """`value` must be one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
