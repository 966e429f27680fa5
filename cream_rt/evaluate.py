"""Evaluate a folder of per-image score maps (`<image_id>.npy`, the layout wsolevaluation
writes) against a metadata split: box metrics for CUB/ILSVRC, PxAP for mask data sets."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import CreamError, ScoreMapError
from .metadata import SplitMetadata, resize_box
from .metrics import BoxEvaluator, PxAPEvaluator, load_gt_mask, parallel_map
from .progress import progress

__all__ = ["gt_boxes_at", "evaluate_map_folder"]


def gt_boxes_at(meta: SplitMetadata, image_id: str, map_size: Sequence[int]) -> np.ndarray:
    """The image's GT boxes scaled to the map size (height, width) as the protocol does."""
    if image_id not in meta.image_sizes:
        raise CreamError(f"{meta.root / 'image_sizes.txt'}: no size for image id {image_id!r}")
    size = meta.image_sizes[image_id]
    return np.array([resize_box(b, size, (map_size[1], map_size[0])) for b in meta.boxes[image_id]],
                    dtype=np.int64)


def _load_map(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt file, pickled object, truncated data
        raise ScoreMapError(f"{path}: not a readable .npy score map ({exc.__class__.__name__}: {exc})") from None


def evaluate_map_folder(maps_dir: str | os.PathLike, meta: SplitMetadata, interval: float = 0.01,
                        mask_root: str | None = None, allow_missing: bool = False,
                        map_size: Sequence[int] = (224, 224), workers: int | None = None,
                        pas: bool = False) -> dict:
    """Metrics of the maps in `maps_dir` over the split; a missing map is an error unless
    `allow_missing` (then a miss at every threshold, or an all-zero map for PxAP). With `pas`,
    box thresholds are fractions of each map's 90th percentile (RCAM's PaS)."""
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise CreamError(f"{maps_dir}: score map folder not found")
    size = tuple(map_size)

    def load(image_id: str) -> np.ndarray | None:
        path = maps_dir / f"{image_id}.npy"
        if not path.is_file():
            if allow_missing:
                return None
            raise ScoreMapError(f"{path}: score map missing for image id {image_id!r} "
                                "(use --allow-missing to count it as a miss)")
        return _load_map(path)

    ids = meta.image_ids
    if meta.has_masks:
        if mask_root is None:
            raise CreamError("this split has mask annotations: pass --mask-root DIR")
        pxap = PxAPEvaluator(interval, size)
        missing = []
        for image_id in progress(ids, "PxAP", unit="img"):
            scoremap = load(image_id)
            if scoremap is None:
                missing.append(image_id)
                scoremap = np.zeros(size, np.float32)
            gt = load_gt_mask(mask_root, meta.mask_paths[image_id], meta.ignore_paths[image_id], size)
            pxap.add(scoremap, gt, name=image_id)
        out = pxap.result()
        out["num_missing"] = len(missing)
        out["missing"] = missing[:20]
        return out

    if not meta.has_boxes:
        raise CreamError(f"{meta.root}: the split has no localization annotations")
    evaluator = BoxEvaluator(interval, size, pas=pas)

    def work(image_id: str):
        scoremap = load(image_id)
        if scoremap is None:
            return None
        return evaluator.compute(scoremap, gt_boxes_at(meta, image_id, size), name=image_id)

    for image_id, result in zip(ids, progress(parallel_map(work, ids, workers), "MaxBoxAcc",
                                               total=len(ids), unit="img")):
        evaluator.accumulate(result, name=image_id)
    out = evaluator.result()
    out["missing"] = evaluator.missing[:20]
    return out
