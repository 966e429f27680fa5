"""A reference (the eager model, or the fp32 export an int8 one came from) vs an export on the
same images: differences of maps and logits, top-1 agreement, box agreement at a threshold, and
MaxBoxAccV2 / GT-known Loc of both (`cream parity`, the demo)."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .errors import CreamError
from .scoring import SplitScorer, check_labels, split_batches
from .session import Predictor

__all__ = ["box_agreement", "compute_parity", "check_same_source"]


def box_agreement(eager_maps: np.ndarray, export_maps: np.ndarray, threshold: float,
                  pas: bool = False) -> np.ndarray:
    """Per image, IoU of the largest-contour boxes of the two maps at `threshold`."""
    from .boxes import iou_matrix, map_boxes

    return np.array([iou_matrix(map_boxes(a, threshold, False, pas), map_boxes(b, threshold, False, pas))[0, 0]
                     for a, b in zip(eager_maps, export_maps)])


def compute_parity(checkpoint: str | None, model: str, meta, images: Path, batch_size: int = 16,
                   threshold: float = 0.2, interval: float = 0.01, regressor: str | None = None,
                   reference: str | None = None) -> dict:
    """Run a reference and an export over the same batches and compare them.

    Args:
        checkpoint: the eager model's checkpoint (the reference), or None with `reference`.
        model: the ONNX export (made from that checkpoint; its mode and T are used for both).
        meta, images: the split and its image root.
        threshold: box threshold at which the two engines' boxes are compared.
        interval: the score-threshold step of MaxBoxAccV2.
        regressor: the box regressor file the export was made with (required when it has one).
        reference: instead of `checkpoint`, an fp32 ONNX export of the same checkpoint (e.g. the
            source of an int8 export); no torch needed.
    Returns:
        Map and logit differences, top-1 agreement, the share of boxes at IoU >= 0.99,
        MaxBoxAccV2 and GT-known Loc of both (`_eager` or `_reference`, and `_exported`),
        providers, machine and versions.
    """
    from .runtime import OnnxPredictor

    if (checkpoint is None) == (reference is None):
        raise CreamError("parity needs one reference: a checkpoint (eager) or an fp32 export (--reference)")
    exported = OnnxPredictor.load(model, allow_custom_ops=True)
    m = exported.manifest
    if m.regressor != bool(regressor):
        raise CreamError(f"{model}: " + ("has a box regressor: pass the file it was exported with (--regressor)"
                                         if m.regressor else "has no box regressor; leave out --regressor"))
    check_labels(meta, len(m.class_names), model)
    base: Predictor
    if checkpoint is not None:
        from .model.eager import EagerPredictor

        eager = EagerPredictor.from_checkpoint(checkpoint, m.mode, m.iterations, regressor=regressor)
        cfg, base = eager.model.config, eager
        if (cfg.input_size, len(cfg.class_names) or cfg.num_classes) != (m.input_size, len(m.class_names)):
            raise CreamError(f"{model}: exported from a different model than {checkpoint} "
                             f"(input size or classes differ)")
        base_name = "eager"
    elif reference is not None:
        ref = OnnxPredictor.load(reference)
        check_same_source(ref.manifest, m, reference, model)
        base = ref
        base_name = "reference"
    ids = meta.image_ids
    scorers = {name: SplitScorer(meta, m.input_size, interval, pas=m.pas) for name in (base_name, "exported")}
    diffs: list[np.ndarray] = []
    box_ious: list[np.ndarray] = []
    logit_diff, agree, regressed_diff = 0.0, 0, 0.0
    for chunk, x, labels in split_batches(meta, images, batch_size, m.input_size, m.mean, m.std, "parity"):
        results = {}
        for name, predictor in ((base_name, base), ("exported", exported)):
            logits, maps, regressed = predictor.run(x, labels)
            scorers[name].add(chunk, logits, maps)
            results[name] = (logits, maps, regressed)
        (le, me, re), (lx, mx, rx) = results[base_name], results["exported"]
        if re is not None:
            regressed_diff = max(regressed_diff, float(np.abs(re - rx).max()))
        diffs.append(np.abs(me - mx).reshape(len(chunk), -1))
        logit_diff = max(logit_diff, float(np.abs(le - lx).max()))
        agree += int((le.argmax(1) == lx.argmax(1)).sum())
        box_ious.append(box_agreement(me, mx, threshold, m.pas))
    all_diffs = np.concatenate(diffs)
    all_ious = np.concatenate(box_ious)
    scores = {k: s.result() for k, s in scorers.items()}
    acc = {k: r["MaxBoxAccV2"] for k, r in scores.items()}
    return {
        "maps_max_abs_diff": float(all_diffs.max()),
        "maps_p99_abs_diff": float(np.percentile(all_diffs, 99)),
        "logits_max_abs_diff": logit_diff,
        "top1_agreement": agree / len(ids),
        "box_iou_ge_099_fraction": float((all_ious >= 0.99).mean()),
        "box_threshold": threshold,
        f"MaxBoxAccV2_{base_name}": acc[base_name],
        "MaxBoxAccV2_exported": acc["exported"],
        "MaxBoxAccV2_diff": abs(acc[base_name] - acc["exported"]),
        f"GT_known_Loc_{base_name}": scores[base_name]["GT_known_Loc"],
        "GT_known_Loc_exported": scores["exported"]["GT_known_Loc"],
        "num_images": len(ids),
        **({"regressor_boxes_max_abs_diff": regressed_diff} if m.regressor else {}),
        "mode": m.mode, "iterations": m.iterations, "backbone": m.backbone, "precision": m.precision,
        "reference": reference or checkpoint,
        "providers": exported.session.get_providers(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": m.versions,
    }


def check_same_source(reference, model, reference_path: str, model_path: str) -> None:
    """Both manifests describe exports of one checkpoint with the same mode and T, the reference fp32."""
    if reference.precision != "fp32":
        raise CreamError(f"{reference_path}: the reference must be an fp32 export, this one is {reference.precision}")
    if reference.checkpoint_sha256 != model.checkpoint_sha256:
        raise CreamError(f"{reference_path}: exported from another checkpoint than {model_path}")
    if (reference.mode, reference.iterations) != (model.mode, model.iterations):
        raise CreamError(f"{reference_path}: mode {reference.mode} T={reference.iterations}, but {model_path} is "
                         f"mode {model.mode} T={model.iterations}: export the reference with the same settings")
