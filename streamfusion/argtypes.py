"""argparse value types that refuse bad flag values up front, naming the rule broken.

A bad value then stops the command before any work, with argparse's usual
``argument --flag: invalid value`` message, instead of failing deep inside a run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from streamfusion.data.schema import TYPES


def _number(kind: type, test: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    parse.__name__ = rule  # argparse names the type in some of its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonneg_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
unit_interval = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def at_least(low: int) -> Callable[[str], int]:
    """An integer type that is at least ``low``."""
    return _number(int, lambda v: v >= low, f"an integer >= {low}")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An integer type in ``[low, high]``."""
    return _number(int, lambda v: low <= v <= high, f"an integer in [{low}, {high}]")


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. ``128,128`` (empty: no items)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = (0,)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers >= 1")
    return values


def delimiter(text: str) -> str:
    """One character, or ``tab`` (also ``\\t`` as typed in a shell)."""
    if text.lower() in ("tab", "\\t"):
        return "\t"
    if len(text.encode()) != 1 or text in ('"', "\n", "\r"):
        raise argparse.ArgumentTypeError(f"{text!r} is not one character (or tab); a CSV's "
                                         "separator is one byte, not a quote or a newline")
    return text


def column_types(text: str) -> dict[str, str]:
    """``COL=num|cat|time|skip`` pairs, comma separated, e.g. ``zip=cat,score=num``."""
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, kind = part.rpartition("=")
        if not sep or not name or kind not in TYPES:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not COLUMN=num, COLUMN=cat, COLUMN=time or COLUMN=skip")
        if name in out:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of distinct columns ({name!r} twice)")
        out[name] = kind
    return out
