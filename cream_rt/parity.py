"""Eager model vs its export on the same images: differences of maps and logits, top-1
agreement, box agreement at a threshold, and MaxBoxAccV2 of both (`cream parity`, the demo)."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .errors import CreamError
from .scoring import SplitScorer, check_labels, split_batches

__all__ = ["box_agreement", "compute_parity"]


def box_agreement(eager_maps: np.ndarray, export_maps: np.ndarray, threshold: float,
                  pas: bool = False) -> np.ndarray:
    """Per image, IoU of the largest-contour boxes of the two maps at `threshold`."""
    from .boxes import iou_matrix
    from .runtime import map_boxes

    return np.array([iou_matrix(map_boxes(a, threshold, False, pas), map_boxes(b, threshold, False, pas))[0, 0]
                     for a, b in zip(eager_maps, export_maps)])


def compute_parity(checkpoint: str, model: str, meta, images: Path, batch_size: int = 16, threshold: float = 0.2,
                   interval: float = 0.01, regressor: str | None = None) -> dict:
    """Run the eager model and its export over the same batches and compare them.

    Args:
        checkpoint: the eager model's checkpoint.
        model: the ONNX export (made from that checkpoint; its mode and T are used for both).
        meta, images: the split and its image root.
        threshold: box threshold at which the two engines' boxes are compared.
        interval: the score-threshold step of MaxBoxAccV2.
        regressor: the box regressor file the export was made with (required when it has one).
    Returns:
        Map and logit differences, top-1 agreement, the share of boxes at IoU >= 0.99,
        MaxBoxAccV2 of both, providers, machine and versions.
    """
    from .model.eager import EagerPredictor
    from .runtime import OnnxPredictor

    exported = OnnxPredictor.load(model, allow_custom_ops=True)
    m = exported.manifest
    if m.regressor != bool(regressor):
        raise CreamError(f"{model}: " + ("has a box regressor: pass the file it was exported with (--regressor)"
                                         if m.regressor else "has no box regressor; leave out --regressor"))
    eager = EagerPredictor.from_checkpoint(checkpoint, m.mode, m.iterations, regressor=regressor)
    cfg = eager.model.config
    check_labels(meta, len(m.class_names), model)
    if (cfg.input_size, len(cfg.class_names) or cfg.num_classes) != (m.input_size, len(m.class_names)):
        raise CreamError(f"{model}: exported from a different model than {checkpoint} "
                         f"(input size or classes differ)")
    ids = meta.image_ids
    scorers = {"eager": SplitScorer(meta, m.input_size, interval, pas=m.pas),
               "exported": SplitScorer(meta, m.input_size, interval, pas=m.pas)}
    diffs, logit_diff, agree, box_ious, regressed_diff = [], 0.0, 0, [], 0.0
    for chunk, x, labels in split_batches(meta, images, batch_size, m.input_size, m.mean, m.std, "parity"):
        results = {}
        for name, predictor in (("eager", eager), ("exported", exported)):
            logits, maps, regressed = predictor.run(x, labels)
            scorers[name].add(chunk, logits, maps)
            results[name] = (logits, maps, regressed)
        (le, me, re), (lx, mx, rx) = results["eager"], results["exported"]
        if re is not None:
            regressed_diff = max(regressed_diff, float(np.abs(re - rx).max()))
        diffs.append(np.abs(me - mx).reshape(len(chunk), -1))
        logit_diff = max(logit_diff, float(np.abs(le - lx).max()))
        agree += int((le.argmax(1) == lx.argmax(1)).sum())
        box_ious.append(box_agreement(me, mx, threshold, m.pas))
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
        **({"regressor_boxes_max_abs_diff": regressed_diff} if m.regressor else {}),
        "mode": m.mode, "iterations": m.iterations, "backbone": m.backbone,
        "providers": exported.session.get_providers(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": m.versions,
    }


