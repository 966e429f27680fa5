"""Option groups that subcommands share, each defined once (data and device, unreadable
images, embeddings, JSON output)."""
from __future__ import annotations

import argparse

from ..argtypes import BATCH_SIZE, NON_NEGATIVE, int_in
from ..unreadable import MAX_BAD_IMAGES

__all__ = ["add_data", "add_max_bad_images", "add_embedding_options", "add_json"]


def add_data(p: argparse.ArgumentParser, batch_size: int = 32, seed: bool = True) -> None:
    """--data / --images / --metadata (wsolevaluation layout), --batch-size, --seed, --device."""
    p.add_argument("--data", help="data root: images/ and metadata/<split>/ (wsolevaluation layout)")
    p.add_argument("--images", help="image root (instead of DATA/images)")
    p.add_argument("--metadata", help="metadata root with train/ val/ test/ (instead of DATA/metadata)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=batch_size)
    if seed:
        p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def add_max_bad_images(p: argparse.ArgumentParser) -> None:
    """The --max-bad-images option of commands that read image folders."""
    p.add_argument("--max-bad-images", type=int_in(0, 10_000_000), default=MAX_BAD_IMAGES, metavar="N",
                   help="unreadable images are skipped and reported; more than N stop the run "
                        f"(default {MAX_BAD_IMAGES})")


def add_embedding_options(p: argparse.ArgumentParser, default: str) -> None:
    """--embeddings and --fallback (CreamConfig.embeddings / fallback; None: `default`)."""
    p.add_argument("--embeddings", choices=["per-class", "agnostic"], default=None,
                   help=f"per-class: a foreground/background pair per class (the paper); agnostic: one pair fitted "
                        f"on all images for every class (default: {default})")
    p.add_argument("--fallback", choices=["class-mean", "image-mean"], default=None,
                   help=f"the pair of a class without a fitting image: the mean of the fitted classes' pairs or the "
                        f"pair fitted on all images (default: {default})")


def add_json(p: argparse.ArgumentParser, text: str = "print one JSON object on stdout") -> None:
    """The --json option: one JSON object on stdout."""
    p.add_argument("--json", action="store_true", help=text)
