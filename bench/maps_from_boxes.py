"""CAM-like score maps built from ground-truth boxes (no images needed): a peaked blob on part
of the object, weaker blobs elsewhere, smooth low-resolution noise, bicubic upsampling and
minmax, like a real 14x14 CAM. Used to exercise the evaluator on real box distributions."""
from __future__ import annotations

import cv2
import numpy as np


def cam_like_map(gt_boxes: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                 feature: int = 14, noise: float = 0.08) -> np.ndarray:
    """One float32 map `size` in [0, 1] for GT boxes given at map resolution; `noise` is the
    standard deviation of the low-resolution background (0: blobs only, no holes)."""
    height, width = size
    yy, xx = np.mgrid[0:feature, 0:feature].astype(np.float64) + 0.5
    low = rng.normal(0.0, noise, (feature, feature)) if noise > 0 else np.zeros((feature, feature))
    for x0, y0, x1, y1 in np.asarray(gt_boxes, dtype=np.float64):
        cx = (x0 + (x1 - x0) * rng.uniform(0.2, 0.8)) * feature / width
        cy = (y0 + (y1 - y0) * rng.uniform(0.2, 0.8)) * feature / height
        sx = max(0.4, (x1 - x0) * feature / width * rng.uniform(0.1, 0.5))
        sy = max(0.4, (y1 - y0) * feature / height * rng.uniform(0.1, 0.5))
        low += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 / (2 * sx * sx) + (yy - cy) ** 2 / (2 * sy * sy)))
    for _ in range(rng.integers(0, 3)):  # distractors
        cx, cy = rng.uniform(0, feature, 2)
        low += rng.uniform(0.1, 0.6) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(0.5, 2) ** 2))
    up = cv2.resize(low.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(up.min()), float(up.max())
    return ((up - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros(size, np.float32)
