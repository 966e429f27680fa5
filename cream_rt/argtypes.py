"""argparse types that validate numbers where they are parsed, so a bad value is one
`cream: error: argument --x: ...` line before any work starts."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["int_in", "float_in", "int_list", "name_list", "POSITIVE", "NON_NEGATIVE", "BATCH_SIZE", "ITERATIONS",
           "EPOCHS", "THREADS", "INPUT_SIZE", "FRACTION", "INTERVAL"]


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either bound optional)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {_range(low, high)}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(low: float | None = None, high: float | None = None, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A finite float in the interval given by the bounds (open or closed)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        bad |= low is not None and (value <= low if low_open else value < low)
        bad |= high is not None and (value >= high if high_open else value > high)
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected a finite number {_range(low, high, low_open, high_open)}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def _range(low, high, low_open: bool = False, high_open: bool = False) -> str:
    def show(v) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {show(low)}"
    return f"{'<' if high_open else '<='} {show(high)}"


def int_list(low: int | None = None, high: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers, each in [low, high]; at least one."""
    one = int_in(low, high)

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(one(v.strip()) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return values
    parse.__name__ = "integer list"
    return parse


def name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names; at least one."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


POSITIVE = int_in(1)
NON_NEGATIVE = int_in(0)
BATCH_SIZE = int_in(1, 4096)
ITERATIONS = int_in(1, 32)  # CREAM EM steps; the export unrolls them, so bounded
EPOCHS = int_in(1, 100_000)
THREADS = int_in(1, 1024)
INPUT_SIZE = int_in(32, 4096)
FRACTION = float_in(0.0, 1.0, high_open=True)  # a box threshold as a fraction of the map's max
INTERVAL = float_in(1e-4, 0.5)  # score-threshold step: at most 10,000 thresholds
