"""`cream eval`: metrics of score maps, a checkpoint or an exported model."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import print_json, print_table
from ..errors import CreamError
from ..metadata import read_split


def split_dir(args: argparse.Namespace) -> Path:
    """The metadata split folder from --metadata, or DATA/metadata/SPLIT."""
    if args.metadata:
        return Path(args.metadata)
    if args.data:
        return Path(args.data) / "metadata" / args.split
    raise CreamError("pass --metadata SPLIT_DIR or --data DIR [--split NAME]")


def report(result: dict, as_json: bool, title: str) -> None:
    """Print metrics as JSON or as a readable table."""
    if as_json:
        print_json(result)
        return
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += [(f"{key}[{k}]", v) for k, v in value.items()]
        elif isinstance(value, list):
            if value:
                rows.append((key, ", ".join(map(str, value))))
        else:
            rows.append((key, value))
    print_table(rows, title)


def run(args: argparse.Namespace) -> int:
    sources = [s for s in (args.maps, args.checkpoint, args.model) if s]
    if len(sources) != 1:
        raise CreamError("pass exactly one of --maps, --checkpoint, --model")
    meta = read_split(split_dir(args))
    if args.maps:
        from ..evaluate import evaluate_map_folder

        result = evaluate_map_folder(args.maps, meta, args.interval, args.mask_root,
                                     args.allow_missing, tuple(args.map_size), args.workers)
        report(result, args.json, f"wsolevaluation metrics of {args.maps}")
        return 0
    from .model_eval import evaluate_model

    result = evaluate_model(args, meta)
    report(result, args.json, "wsolevaluation metrics")
    return 0
