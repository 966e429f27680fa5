"""`cream demo`: the main job on the built-in synthetic benchmark: synthesize, train a small
CREAM model, evaluate CAM vs CREAM (T = 0..4) on the test split, write overlay images."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_json
from ..cli import print_json
from ..metadata import read_split


def overlay(image_rgb: np.ndarray, scoremap: np.ndarray, box, gt_box) -> np.ndarray:
    """Heat map blended on the image, predicted box in green, GT box in red (BGR output)."""
    heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), 0.55, heat, 0.45, 0)
    cv2.rectangle(out, tuple(int(v) for v in gt_box[:2]), tuple(int(v) for v in gt_box[2:]), (0, 0, 255), 1)
    cv2.rectangle(out, tuple(int(v) for v in box[:2]), tuple(int(v) for v in box[2:]), (0, 255, 0), 1)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from ..boxes import boxes_at_threshold, quantize
    from ..model.checkpoint import load_checkpoint
    from ..preprocess import preprocess_batch, read_image
    from ..synth import SynthConfig, generate
    from ..train.trainer import TrainConfig, evaluate_split, train

    out = Path(args.out)
    data = out / "synth"
    started = time.time()
    if not (data / "metadata" / "test" / "image_ids.txt").is_file():
        print(f"[1/4] synthesizing the benchmark into {data}")
        generate(data, SynthConfig(train=args.train, seed=args.seed))
    ckpt = out / "small-cnn.pt"
    print(f"[2/4] training small-cnn for {args.epochs} epochs -> {ckpt}")
    train("small-cnn", str(data), str(ckpt), config=TrainConfig(epochs=args.epochs, seed=args.seed))
    model, _ = load_checkpoint(ckpt)
    test = read_split(data / "metadata" / "test")
    print("[3/4] evaluating CAM vs CREAM on the test split (MaxBoxAccV2, GT-known Loc)")
    variants = {f"T={t}": ("cream", t) for t in range(5)}
    metrics = evaluate_split(model, test, data / "images", variants, 64)
    keys = ("MaxBoxAccV2", "MaxBoxAcc", "GT_known_Loc", "Top1_Loc", "classification_top1")
    table = {name: {k: m[k] for k in keys} for name, m in metrics.items()}
    print(f"  {'maps':<12}{'MaxBoxAccV2':>12}{'GT-known':>10}{'Top-1 Loc':>11}")
    for name, row in table.items():
        label = "CAM (T=0)" if name == "T=0" else f"CREAM {name}"
        print(f"  {label:<12}{row['MaxBoxAccV2']:>12.2f}{row['GT_known_Loc']:>10.2f}{row['Top1_Loc']:>11.2f}")
    print("[4/4] writing overlays")
    ids = test.image_ids[:8]
    images = [read_image(data / "images" / i) for i in ids]
    cfg = model.config
    x = torch.from_numpy(preprocess_batch(images, cfg.input_size, cfg.mean, cfg.std))
    labels = torch.tensor([test.class_labels[i] for i in ids])
    tiles = []
    with torch.no_grad():
        for mode in ("cam", "cream"):
            maps = model(x, labels, mode)[1].numpy()
            row = []
            for image, m, image_id in zip(images, maps, ids):
                img = quantize(m)
                box = boxes_at_threshold(img, int(0.2 * int(img.max())), False)[0]
                row.append(overlay(image, m, box, test.boxes[image_id][0]))
            tiles.append(np.concatenate(row, axis=1))
    overlay_path = out / "overlays_cam_top_cream_bottom.png"
    cv2.imwrite(str(overlay_path), cv2.resize(np.concatenate(tiles, axis=0), None, fx=2, fy=2,
                                              interpolation=cv2.INTER_NEAREST))
    summary = {"table": table, "checkpoint": str(ckpt), "overlays": str(overlay_path),
               "seconds": round(time.time() - started, 1)}
    write_json(out / "demo_results.json", summary)
    if args.json:
        print_json(summary)
    print(f"done in {summary['seconds']} s; overlays: {overlay_path}")
    return 0
