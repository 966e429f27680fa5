"""Which int8 recipe keeps the maps: MaxBoxAccV2 / GT-known Loc of one fp32 export and of its
int8 exports under several recipes, on trained accuracy-suite cells (test split).

    python -m bench.studies.int8_recipes --work accuracy_work \\
        --cells tinted-efficientnet-lite0-s0,clutter-efficientnet-lite0-s0,default-efficientnet-lite0-s0 \\
        --out bench/results/studies/int8_recipes.json

Recipes (export/quantize.py): `conv-only` quantizes each Conv alone (a Q/DQ pair on its
pre-activation output: the recipe before 2026-12-04), `backbone` quantizes Conv + activation
units and the residual Adds; each with the stem in int8 or fp32, and with min-max or
percentile ranges. Calibration: 256 training images, as `cream export --int8` does."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import command_line, machine_info

RECIPES = {
    "conv-only, int8 stem (before)": dict(scheme="conv-only", fp32_stem=False, bias_correction=False),
    "conv-only, fp32 stem": dict(scheme="conv-only", fp32_stem=True, bias_correction=False),
    "conv-only, int8 stem, percentile": dict(scheme="conv-only", fp32_stem=False, calibration="percentile",
                                             bias_correction=False),
    "backbone units, int8 stem": dict(scheme="backbone", fp32_stem=False, bias_correction=False),
    "backbone units, fp32 stem": dict(scheme="backbone", fp32_stem=True, bias_correction=False),
    "backbone units, fp32 stem, percentile": dict(scheme="backbone", fp32_stem=True, calibration="percentile",
                                                  bias_correction=False),
    "backbone units, fp32 stem, bias corrected (default)": dict(scheme="backbone", fp32_stem=True,
                                                                bias_correction=True),
}


def score(model: str, meta, images: Path) -> dict:
    """MaxBoxAccV2 and GT-known Loc of an export on a split (GT-class maps), and its maps."""
    from cream_rt.runtime import OnnxPredictor
    from cream_rt.scoring import SplitScorer, split_batches

    predictor = OnnxPredictor.load(model)
    m = predictor.manifest
    scorer, maps = SplitScorer(meta, m.input_size, 0.01), []
    for chunk, x, labels in split_batches(meta, images, 50, m.input_size, m.mean, m.std, "score"):
        logits, cams = predictor(x, labels)
        scorer.add(chunk, logits, cams)
        maps.append(cams)
    result = scorer.result()
    return {"MaxBoxAccV2": result["MaxBoxAccV2"], "GT_known_Loc": result["GT_known_Loc"],
            "maps": np.concatenate(maps)}


def run_cell(work: Path, cell: str, recipes: dict, checkpoint: str = "model.pt") -> dict:
    """fp32 and every int8 recipe of one suite cell (`<preset>-<backbone>-s<seed>`), from the
    cell folder's `checkpoint`."""
    from cream_rt.export.onnx_export import export_checkpoint
    from cream_rt.export.quantize import calibration_batches, quantize_export, split_images
    from cream_rt.metadata import read_split, split_paths
    from cream_rt.synth import PRESETS

    from ..accuracy import SYNTH_RECIPES as CELL_RECIPES

    preset = max((p for p in PRESETS if cell.startswith(p + "-")), key=len)
    backbone, seed = cell[len(preset) + 1:].rsplit("-s", 1)
    data = work / f"data-{preset}-{CELL_RECIPES[backbone].image_size}-s{seed}"
    split_dir, images = split_paths(data, "test")
    meta = read_split(split_dir)
    train_dir, train_images = split_paths(data, "train")
    out = {"cell": cell, "checkpoint": checkpoint, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = str(Path(tmp) / "fp32.onnx")
        manifest = export_checkpoint(str(work / cell / checkpoint), fp32)
        reference = score(fp32, meta, images)
        out["rows"]["fp32"] = {k: reference[k] for k in ("MaxBoxAccV2", "GT_known_Loc")}
        paths = split_images(train_dir, train_images, 256)
        for name, options in recipes.items():
            path = str(Path(tmp) / "int8.onnx")
            quantize_export(fp32, path, calibration_batches(paths, manifest.input_size, manifest.mean, manifest.std),
                            **options)
            got = score(path, meta, images)
            diff = np.abs(got["maps"] - reference["maps"])
            out["rows"][name] = {"MaxBoxAccV2": got["MaxBoxAccV2"], "GT_known_Loc": got["GT_known_Loc"],
                                 "MaxBoxAccV2_vs_fp32": got["MaxBoxAccV2"] - reference["MaxBoxAccV2"],
                                 "GT_known_vs_fp32": got["GT_known_Loc"] - reference["GT_known_Loc"],
                                 "maps_mean_abs_diff": float(diff.mean()), "maps_max_abs_diff": float(diff.max())}
            print(f"{cell} {name}: MaxBoxAccV2 {got['MaxBoxAccV2']:.2f} "
                  f"({out['rows'][name]['MaxBoxAccV2_vs_fp32']:+.2f} vs fp32), GT-known "
                  f"{out['rows'][name]['GT_known_vs_fp32']:+.2f}, maps mean |diff| {diff.mean():.4f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="accuracy_work", help="the accuracy suite's work folder")
    parser.add_argument("--cells", required=True, help="cell folders, comma-separated")
    parser.add_argument("--out", default=None, help="JSON result file (e.g. bench/results/studies/int8_recipes.json)")
    parser.add_argument("--checkpoint", default="model.pt",
                        help="checkpoint file name inside each cell folder (default model.pt, as the suite trained it)")
    parser.add_argument("--recipes", default=None, help="recipe names, separated by semicolons (default: all)")
    parser.add_argument("--append", action="store_true",
                        help="merge into --out: a cell's rows measured here replace the same rows there")
    args = parser.parse_args(argv)
    unknown = [name for name in (args.recipes or "").split(";") if name and name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; have: {'; '.join(RECIPES)}")
    recipes = RECIPES if args.recipes is None else {name: RECIPES[name] for name in args.recipes.split(";")}
    command = command_line("studies.int8_recipes", argv)
    result = {"benchmark": "int8_recipes", "cells": [], "machine": machine_info(), "commands": []}
    if args.append and args.out and Path(args.out).is_file():
        result = dict(json.loads(Path(args.out).read_text()), machine=machine_info())
        result.setdefault("commands", [result.pop("command")] if "command" in result else [])
    result["commands"] = list(dict.fromkeys(result["commands"] + [command]))
    for name in args.cells.split(","):
        cell = run_cell(Path(args.work), name, recipes, args.checkpoint)
        old = next((c for c in result["cells"] if c["cell"] == name
                    and c.get("checkpoint", "model.pt") == args.checkpoint), None)
        if old is None:
            result["cells"].append(cell)
        else:
            old["rows"].update(cell["rows"])
        if args.out:  # after every cell: a long run keeps what it measured
            write_json(args.out, result, what="--out")
    return result


if __name__ == "__main__":
    main()
