"""Progress bars on stderr (tqdm), quiet when stderr is not a terminal unless forced."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["T", "progress_enabled", "progress"]

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars on stderr when it is a terminal, unless CREAM_NO_PROGRESS=1."""
    return sys.stderr.isatty() and os.environ.get("CREAM_NO_PROGRESS") != "1"


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             enabled: bool | None = None) -> Iterable[T]:
    """Wrap `items` in a tqdm bar; disabled with CREAM_NO_PROGRESS=1 or when not a TTY."""
    if enabled is None:
        enabled = progress_enabled()
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)
