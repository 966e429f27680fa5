"""`cream demo`: the main job on the built-in synthetic benchmark: synthesize, train a small
CREAM model, CAM vs CREAM (T = 0..4), export to ONNX, eager vs ONNX parity and latency,
localize a batch through ONNX Runtime and write overlays."""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..argtypes import EPOCHS, NON_NEGATIVE, float_in, int_in
from ..atomic import write_json
from ..metadata import read_split
from .options import add_json
from .output import print_json


def localize_and_draw(models: dict[str, Path], test, image_root: Path, ids: list[str], out: Path,
                      thresholds: dict[str, float]) -> tuple[list, Path]:
    """Localize `ids` with the CAM and CREAM exports through ONNX Runtime at `thresholds` (per
    mode); one PNG, CAM row on top, CREAM below. Returns (CREAM results, path of the PNG)."""
    import cv2

    from ..overlay import draw_overlay
    from ..preprocess import read_image
    from ..runtime import Localizer

    paths = [str(image_root / i) for i in ids]
    with Localizer.load(models["cream"], threshold=thresholds["cream"]) as cream_loc, \
            Localizer.load(models["cam"], threshold=thresholds["cam"]) as cam_loc:
        results, cam_results = cream_loc(paths, return_maps=True), cam_loc(paths, return_maps=True)
    rows = []
    for row in (cam_results, results):
        tiles = [draw_overlay(read_image(path), r.map, r.boxes, gt_boxes=test.boxes[i][:1], thickness=1)
                 for path, i, r in zip(paths, ids, row)]
        rows.append(np.concatenate(tiles, axis=1))
    overlay_path = out / "overlays_cam_top_cream_bottom.png"
    grid = cv2.resize(np.concatenate(rows, axis=0), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    if not cv2.imwrite(str(overlay_path), grid):
        from ..errors import OutputError

        raise OutputError(f"--out: cannot write {overlay_path}")
    return results, overlay_path


def latency_table(checkpoint: Path, models: dict[str, Path], input_size: int, batch_sizes=(1, 8)) -> dict:
    """Median latency per image of eager torch and ONNX Runtime for each exported mode."""
    from ..benchmark.latency import measure_interleaved
    from ..model.eager import EagerPredictor
    from ..runtime import OnnxPredictor

    rng = np.random.default_rng(0)
    predictors: dict[tuple[str, str], Callable] = {}
    for mode, path in models.items():
        onnx_predictor = OnnxPredictor.load(path)
        predictors[("eager", mode)] = EagerPredictor.from_checkpoint(str(checkpoint), mode,
                                                                    onnx_predictor.manifest.iterations)
        predictors[("onnxruntime", mode)] = onnx_predictor
    table = {}
    for b in batch_sizes:
        x = rng.normal(0, 1, (b, 3, input_size, input_size)).astype(np.float32)
        calls = {key: (lambda p=p, x=x: p(x)) for key, p in predictors.items()}
        for (engine, mode), stats in measure_interleaved(calls, budget_s=4.0).items():
            table[f"{engine}/{mode}/b{b}"] = {"ms_per_image": stats["p50_ms"] / b, "ms_per_batch": stats["p50_ms"],
                                              "repeats": stats["repeats"]}
    return table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream demo`'s arguments."""
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--epochs", type=EPOCHS, default=6)
    p.add_argument("--train", type=int_in(16, 10_000_000), default=3000, help="training images")
    p.add_argument("--body-tint", type=float_in(0.0, 1.0), default=0.0,
                   help="synthetic body class tint (see `cream synth`)")
    p.add_argument("--decoys", type=int_in(0, 16), default=2,
                   help="synthetic decoy heads per image (see `cream synth`)")
    p.add_argument("--feature-mean", choices=["raw", "unit"], default="unit",
                   help="CREAM's embeddings and M-step average L2-normalised (unit, default) or raw features")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """The demo; with --json every human-readable line goes to stderr and stdout holds only the
    summary JSON."""
    from ..atomic import check_output_dir

    check_output_dir(args.out, "--out")
    if not args.json:
        _demo(args)
        return 0
    with contextlib.redirect_stdout(sys.stderr):
        summary = _demo(args)
    print_json(summary)
    return 0


def _demo(args: argparse.Namespace) -> dict:
    from ..config import CreamConfig
    from ..export.onnx_export import export_checkpoint
    from ..model.checkpoint import load_checkpoint
    from ..parity import compute_parity
    from ..synth import SynthConfig, generate
    from ..train.trainer import TrainConfig, evaluate_split, train

    out = Path(args.out)
    data = out / "synth"
    started = time.time()
    step = lambda n, text: print(f"[{n}/7] {text}", flush=True)  # noqa: E731
    if not (data / "metadata" / "test" / "image_ids.txt").is_file():
        step(1, f"synthesizing the benchmark into {data}")
        generate(data, SynthConfig(train=args.train, val=max(30, args.train // 10), test=max(60, args.train // 5),
                                   seed=args.seed, body_tint=args.body_tint,
                                   decoys=args.decoys))
    else:
        step(1, f"reusing the benchmark in {data}")
    ckpt = out / "small-cnn.pt"
    step(2, f"training small-cnn for {args.epochs} epochs -> {ckpt}")
    train("small-cnn", str(data), str(ckpt), config=TrainConfig(epochs=args.epochs, seed=args.seed),
          cream=CreamConfig(feature_mean=args.feature_mean))
    model, _ = load_checkpoint(ckpt)
    test = read_split(data / "metadata" / "test")

    step(3, "CAM vs CREAM on the test split (GT-class maps)")
    variants = {f"T={t}": ("cream", t) for t in range(5)}
    metrics = evaluate_split(model, test, data / "images", variants, 64)
    keys = ("MaxBoxAccV2", "MaxBoxAcc", "GT_known_Loc", "Top1_Loc", "classification_top1")
    accuracy = {name: {k: m[k] for k in keys} for name, m in metrics.items()}
    print(f"  {'maps':<12}{'MaxBoxAccV2':>12}{'GT-known':>10}{'Top-1 Loc':>11}")
    for name, row in accuracy.items():
        label = "CAM (T=0)" if name == "T=0" else f"CREAM {name}"
        print(f"  {label:<12}{row['MaxBoxAccV2']:>12.2f}{row['GT_known_Loc']:>10.2f}{row['Top1_Loc']:>11.2f}")

    step(4, "exporting to ONNX (CREAM T=2 and CAM)")
    models = {"cream": out / "small-cnn-cream.onnx", "cam": out / "small-cnn-cam.onnx"}
    for mode, path in models.items():
        export_checkpoint(str(ckpt), str(path), mode)

    step(5, "eager vs ONNX Runtime parity on the test split")
    parity = compute_parity(str(ckpt), str(models["cream"]), test, data / "images", 64)
    for key in ("maps_max_abs_diff", "logits_max_abs_diff", "top1_agreement", "box_iou_ge_099_fraction",
                "MaxBoxAccV2_eager", "MaxBoxAccV2_exported"):
        print(f"  {key:<26}{parity[key]:.3g}")

    step(6, "latency per image, eager vs ONNX Runtime (median, engines timed in rotating blocks)")
    latency = latency_table(ckpt, models, model.config.input_size)
    print(f"  {'':<18}{'eager ms/img':>14}{'ORT ms/img':>12}{'speed-up':>10}")
    for mode in models:
        for b in (1, 8):
            e = latency[f"eager/{mode}/b{b}"]["ms_per_image"]
            o = latency[f"onnxruntime/{mode}/b{b}"]["ms_per_image"]
            print(f"  {mode + ' batch ' + str(b):<18}{e:>14.3f}{o:>12.3f}{e / o:>9.1f}x")

    step(7, "localizing a batch through ONNX Runtime and writing overlays")
    ids = test.image_ids[:8]
    # the demo's small-cnn is not tuned and ships no threshold: its maps' best thresholds on this
    # split, for the pictures only
    thresholds = {"cream": metrics["T=2"]["MaxBoxAcc_threshold"], "cam": metrics["T=0"]["MaxBoxAcc_threshold"]}
    results, overlay_path = localize_and_draw(models, test, data / "images", ids, out, thresholds)
    summary = {"accuracy_test": accuracy, "parity": parity, "latency": latency,
               "localized": [r.to_dict() | {"image": i} for r, i in zip(results, ids)],
               "checkpoint": str(ckpt), "models": {k: str(v) for k, v in models.items()},
               "overlays": str(overlay_path), "seconds": round(time.time() - started, 1),
               "machine": {"platform": platform.platform(), "processor": platform.processor()}}
    write_json(out / "demo_results.json", summary)
    print(f"done in {summary['seconds']} s; results: {out / 'demo_results.json'}; overlays: {overlay_path} "
          "(green: predicted box, red: ground truth)")
    return summary
