"""Small helpers shared by command modules."""

from __future__ import annotations

import sys
from typing import Any


def print_json(payload: Any) -> None:
    """Strict JSON on stdout: NaN and infinities become null."""
    from transferlab.results.encoding import dumps_pretty

    sys.stdout.write(dumps_pretty(payload, strict=True) + "\n")


def parse_csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_cs(text: str) -> list[float]:
    """A ``--Cs`` grid (``0.01,0.1,1``): positive finite numbers, else one clear line."""
    import math

    from transferlab.errors import TransferlabError

    try:
        cs = [float(c) for c in parse_csv_list(text)]
    except ValueError:
        raise TransferlabError(f"--Cs must be numbers, got {text!r}") from None
    if not cs or any(not (c > 0 and math.isfinite(c)) for c in cs):
        raise TransferlabError(f"--Cs must be positive finite numbers, got {text!r}")
    return cs


def _number(kind: type, text: str, low: float, inclusive: bool, what: str, high: float | None = None):
    import argparse
    import math

    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if (not math.isfinite(value) or value < low or (value == low and not inclusive)
            or (high is not None and value >= high)):
        raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, epochs, counts)."""
    return _number(int, text, 1, True, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (workers, QE, PCA dims, patience; 0 = off/none)."""
    return _number(int, text, 0, True, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, scales)."""
    return _number(float, text, 0.0, False, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (weight decay)."""
    return _number(float, text, 0.0, True, "a finite number >= 0")


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1) (momentum, dropout)."""
    return _number(float, text, 0.0, True, "a number in [0, 1)", high=1.0)
