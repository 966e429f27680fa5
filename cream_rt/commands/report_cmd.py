"""`cream report`: a checkpoint's CAM and CREAM maps over a split with boxes, as one
self-contained HTML page (metrics, MaxBoxAcc against the threshold, a gallery)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..argtypes import INTERVAL
from .options import add_data, add_json, add_max_bad_images
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream report`'s arguments."""
    p.add_argument("--checkpoint", required=True, help="a cream checkpoint (.pt): its CAM and CREAM maps are shown")
    add_data(p, batch_size=16, seed=False)
    p.add_argument("--split", default="test", help="split with boxes to report on (default: test)")
    p.add_argument("--interval", type=INTERVAL, default=0.01, help="score-threshold step (default 0.01)")
    p.add_argument("--out", required=True, help="the HTML page to write (one file, opens from disk)")
    p.add_argument("--models", nargs="+", metavar="ONNX", default=[],
                   help="exports of the checkpoint (fp32, int8, ...): a parity section, each against the eager "
                        "model's maps of its mode (numbers and the largest difference map)")
    p.add_argument("--bench", metavar="JSON", help="a `cream bench --json-out` result: a latency section")
    p.add_argument("--pictures", metavar="DIR",
                   help="also write the threshold chart and one gallery image per group as files (README pictures)")
    add_max_bad_images(p)
    add_json(p, "print the metrics of both modes and the page's size as one JSON object")


def run(args: argparse.Namespace) -> int:
    """`cream report` with the parsed arguments; returns the exit status."""
    import numpy as np

    from ..atomic import check_output_file
    from ..errors import CreamError
    from ..evaluate import gt_boxes_at
    from ..metadata import read_split, split_paths
    from ..metrics import BoxEvaluator
    from ..model.checkpoint import load_checkpoint
    from ..model.device import torch_device
    from ..model.eager import EagerPredictor
    from ..report import MODES, ModeScores, ReportData, require_matplotlib, write_pictures, write_report
    from ..runtime import box_threshold
    from ..scoring import check_labels, split_batches
    from ..unreadable import UnreadableImages

    check_output_file(args.out, "--out")
    if args.pictures and not Path(args.pictures).parent.is_dir():
        raise CreamError(f"--pictures {args.pictures}: its parent folder does not exist")
    require_matplotlib()  # matplotlib missing: one line before any work
    split_dir, images = split_paths(args.data, args.split, args.images, args.metadata)
    meta = read_split(split_dir)
    if not meta.has_boxes:
        raise CreamError(f"{split_dir}: the split has no boxes (localization.txt); the report needs them")
    if not meta.image_ids:
        raise CreamError(f"{split_dir}: the split lists no image")
    bench = _read_bench(args.bench) if args.bench else None
    model, payload = load_checkpoint(args.checkpoint)
    check_labels(meta, model.config.num_classes, args.checkpoint)
    device = str(torch_device(args.device))
    predictors = {mode: EagerPredictor(model, mode, device=device) for mode in MODES}
    size = model.config.input_size
    scores = {mode: ModeScores(BoxEvaluator(args.interval, (size, size))) for mode in MODES}
    exports = _exports(args.models, model, device, size, args.interval)
    unreadable = UnreadableImages(args.max_bad_images)
    correct = 0
    for chunk, x, labels in split_batches(meta, images, args.batch_size, size, model.config.mean, model.config.std,
                                          "report", unreadable):
        truth = {i: gt_boxes_at(meta, i, (size, size)) for i in chunk}
        for mode, predictor in predictors.items():
            logits, maps, _ = predictor.run(x, labels)
            top5 = np.argsort(-logits, axis=1)[:, :5]
            for i, image_id in enumerate(chunk):
                top1 = bool(top5[i, 0] == labels[i])
                correct += top1 and mode == "cream"
                scores[mode].add(image_id, maps[i], truth[image_id], top1, bool(labels[i] in top5[i]))
        for parity, onnx, eager in exports:
            e_logits, e_maps, _ = eager.run(x, labels)
            o_logits, o_maps, _ = onnx.run(x, labels)
            for i, image_id in enumerate(chunk):
                for target, m, lg in ((parity.eager, e_maps, e_logits), (parity.scores, o_maps, o_logits)):
                    target.add(image_id, m[i], truth[image_id], bool(lg[i].argmax() == labels[i]), False)
                parity.add(image_id, e_maps[i], o_maps[i], bool(e_logits[i].argmax() == o_logits[i].argmax()))
    missing = [i for i in meta.image_ids if i in unreadable.reasons]
    for mode in MODES:
        for image_id in missing:
            scores[mode].evaluator.accumulate(None, False, False, image_id)
    cream = predictors["cream"]
    shipped, source = box_threshold(cream.manifest)
    cfg = model.config
    data = ReportData(
        meta=meta, image_root=images, map_size=size, scores=scores, top1=correct * 100.0 / len(meta.image_ids),
        title=f"cream report: {cfg.backbone} on {split_dir}",
        facts={"checkpoint": str(args.checkpoint), "network": cfg.backbone, "split": str(split_dir),
               "images": f"{len(meta.image_ids)} ({len(missing)} unreadable)",
               "CREAM": f"T = {cfg.cream.iterations}, EM layer {cfg.cream.em_layer}, center {cfg.cream.center}",
               "shipped threshold": f"{shipped:.2f} ({source})",
               "command": "cream " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["report"] else "cream report"},
        shipped_threshold=shipped, unreadable=missing, class_names=list(cfg.class_names),
        tune=payload.get("training", {}).get("tune"), parity=[e[0] for e in exports], bench=bench)
    written = write_report(args.out, data)
    pictures = [str(p) for p in write_pictures(args.pictures, data)] if args.pictures else []
    unreadable.warn("report")
    if args.json:
        print_json({"report": str(args.out), "bytes": written, "pictures": pictures,
                    **{mode: data.result(mode) for mode in MODES}})
    else:
        print(f"wrote {args.out} ({written / 1e6:.1f} MB): {len(meta.image_ids)} images, MaxBoxAccV2 CAM "
              f"{data.result('cam')['MaxBoxAccV2']:.2f}, CREAM {data.result('cream')['MaxBoxAccV2']:.2f}")
    return 0


def _exports(paths: list[str], model, device: str, size: int, interval: float) -> list:
    """(ExportParity, the export's predictor, the eager predictor of its mode and T) per export;
    one line for an export of another network or input size."""
    from ..errors import CreamError
    from ..metrics import BoxEvaluator
    from ..model.eager import EagerPredictor
    from ..report import ExportParity, ModeScores
    from ..session import OnnxPredictor

    out = []
    for path in paths:
        onnx = OnnxPredictor.load(path)
        m = onnx.manifest
        if m.input_size != size or len(m.class_names) != model.config.num_classes:
            raise CreamError(f"--models {path}: an export of another network ({m.input_size} px, "
                             f"{len(m.class_names)} classes; the checkpoint: {size} px, {model.config.num_classes})")
        eager = EagerPredictor(model, m.mode, m.iterations if m.mode == "cream" else None, device=device)
        parity = ExportParity(str(path), m.mode, str(m.precision), ModeScores(BoxEvaluator(interval, (size, size))),
                              ModeScores(BoxEvaluator(interval, (size, size))))
        out.append((parity, onnx, eager))
    return out


def _read_bench(path: str) -> dict:
    """A `cream bench --json-out` result; one line for anything else."""
    import json

    from ..errors import CreamError

    try:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CreamError(f"--bench {path}: not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list) or not all(
            isinstance(r, dict) and {"engine", "mode", "batch", "p50_ms_per_image"} <= set(r) for r in result["rows"]):
        raise CreamError(f"--bench {path}: not a `cream bench --json-out` result (rows of engine, mode, batch, "
                         f"p50_ms_per_image)")
    return result
