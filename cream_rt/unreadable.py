"""Unreadable images in a run over a folder of real photos: each is skipped, counted and named
(in the run's record and in one warning line), never fatal on its own and never dropped
silently; more than `limit` of them stop the run with one error line. Torch-free."""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np

from .errors import CreamError, ImageReadError
from .preprocess import read_image

__all__ = ["MAX_BAD_IMAGES", "Unreadable", "UnreadableImages"]

_log = logging.getLogger(__name__)

MAX_BAD_IMAGES = 10  # `--max-bad-images` default: a few broken files, not a broken folder


class Unreadable(NamedTuple):
    """What a data set yields for an image it could not decode (picklable: crosses DataLoader workers)."""

    name: str
    reason: str


class UnreadableImages:
    """The unreadable images of one run, by name (an image seen again in a later epoch counts
    once); `add` raises CreamError once there are more than `limit`."""

    def __init__(self, limit: int = MAX_BAD_IMAGES):
        self.limit = limit
        self.reasons: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.reasons)

    def add(self, name: str, reason: str) -> None:
        self.reasons.setdefault(name, reason)
        if len(self.reasons) > self.limit:
            raise CreamError(f"{len(self.reasons)} images could not be read, more than --max-bad-images "
                             f"{self.limit} (the last: {reason}); fix the folder or raise the limit")

    def read(self, path: str | os.PathLike, name: str) -> np.ndarray | None:
        """The decoded image, or None after recording why it is unreadable."""
        try:
            return read_image(path)
        except ImageReadError as exc:
            self.add(name, str(exc))
            return None

    def record(self) -> dict:
        """{"count", "images": {name: reason}} for results and checkpoints."""
        return {"count": len(self.reasons), "images": dict(sorted(self.reasons.items()))}

    def warn(self, what: str) -> None:
        """One warning (logged) naming the skipped images (nothing when there are none)."""
        if self.reasons:
            names = sorted(self.reasons)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            _log.warning("%s: skipped %d unreadable image%s (%s; reasons in the record)", what, len(names),
                         "s" * (len(names) > 1), shown)
