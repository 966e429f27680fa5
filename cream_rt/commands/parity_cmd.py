"""`cream parity`: the eager model and its export on the same images; differences of maps,
logits, top-1, boxes at the chosen threshold, and MaxBoxAccV2 of both."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..cli import print_json, print_table
from ..errors import CreamError
from ..metadata import read_split
from ..preprocess import preprocess_batch, read_image
from ..progress import progress
from .model_eval import SplitScorer, batches, check_labels


def box_agreement(eager_maps: np.ndarray, export_maps: np.ndarray, threshold: float) -> np.ndarray:
    """Per image, IoU of the largest-contour boxes of the two maps at `threshold`."""
    from ..boxes import iou_matrix
    from ..runtime import map_boxes

    return np.array([iou_matrix(map_boxes(a, threshold, False), map_boxes(b, threshold, False))[0, 0]
                     for a, b in zip(eager_maps, export_maps)])


def compute_parity(checkpoint: str, model: str, meta, images: Path, batch_size: int = 16, threshold: float = 0.2,
                   interval: float = 0.01) -> dict:
    """Run the eager model and the export over the split's images and compare them."""
    from ..model.eager import EagerPredictor
    from ..runtime import OnnxPredictor

    exported = OnnxPredictor.load(model, allow_custom_ops=True)
    m = exported.manifest
    eager = EagerPredictor.from_checkpoint(checkpoint, m.mode, m.iterations)
    cfg = eager.model.config
    check_labels(meta, len(m.class_names), model)
    if (cfg.input_size, len(cfg.class_names) or cfg.num_classes) != (m.input_size, len(m.class_names)):
        raise CreamError(f"{model}: exported from a different model than {checkpoint} "
                         f"(input size or classes differ)")
    ids = meta.image_ids
    scorers = {"eager": SplitScorer(meta, m.input_size, interval),
               "exported": SplitScorer(meta, m.input_size, interval)}
    diffs, logit_diff, agree, box_ious = [], 0.0, 0, []
    for chunk in progress(batches(ids, batch_size), "parity", total=-(-len(ids) // batch_size), unit="batch"):
        x = preprocess_batch([read_image(images / i) for i in chunk], m.input_size, m.mean, m.std)
        labels = np.array([meta.class_labels[i] for i in chunk], np.int64)
        results = {}
        for name, predictor in (("eager", eager), ("exported", exported)):
            logits, maps = predictor(x, labels)
            scorers[name].add(chunk, logits, maps)
            results[name] = (logits, maps)
        (le, me), (lx, mx) = results["eager"], results["exported"]
        diffs.append(np.abs(me - mx).reshape(len(chunk), -1))
        logit_diff = max(logit_diff, float(np.abs(le - lx).max()))
        agree += int((le.argmax(1) == lx.argmax(1)).sum())
        box_ious.append(box_agreement(me, mx, threshold))
    all_diffs = np.concatenate(diffs)
    box_ious = np.concatenate(box_ious)
    acc = {k: s.result()["MaxBoxAccV2"] for k, s in scorers.items()}
    return {
        "maps_max_abs_diff": float(all_diffs.max()),
        "maps_p99_abs_diff": float(np.percentile(all_diffs, 99)),
        "logits_max_abs_diff": logit_diff,
        "top1_agreement": agree / len(ids),
        "box_iou_ge_099_fraction": float((box_ious >= 0.99).mean()),
        "box_threshold": threshold,
        "MaxBoxAccV2_eager": acc["eager"],
        "MaxBoxAccV2_exported": acc["exported"],
        "MaxBoxAccV2_diff": abs(acc["eager"] - acc["exported"]),
        "num_images": len(ids),
        "mode": m.mode, "iterations": m.iterations, "backbone": m.backbone,
        "providers": exported.session.get_providers(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": m.versions,
    }


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file

    if args.results:
        check_output_file(args.results, "--results")
    split_dir = Path(args.metadata) if args.metadata else Path(args.data or ".") / "metadata" / args.split
    meta = read_split(split_dir)
    if args.limit:
        meta.image_ids = meta.image_ids[:args.limit]
    images = Path(args.images) if args.images else Path(args.data or ".") / "images"
    out = compute_parity(args.checkpoint, args.model, meta, images, args.batch_size, args.threshold, args.interval)
    out["command"] = args.command_line
    if args.results:
        write_json(args.results, out, "--results")
    if args.json:
        print_json(out)
    else:
        print_table([(k, v) for k, v in out.items() if not isinstance(v, (dict, list))], "eager vs exported")
    return 0
