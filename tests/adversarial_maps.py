"""Random and adversarial score maps for the evaluator tests (holes, several blobs, plateaus,
constant and all-zero maps, one-pixel objects, objects touching the border)."""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("noise", "blobs", "rings", "blocky", "constant", "zeros", "pixel", "border", "bars", "camlike")


def make_map(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    if kind == "noise":
        m = rng.random((height, width))
    elif kind == "blobs":
        m = np.zeros((height, width))
        for _ in range(rng.integers(1, 6)):
            cx, cy, s = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 12)
            m += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        m += rng.normal(0, rng.uniform(0, 0.1), m.shape)
    elif kind == "rings":  # nested holes and islands
        r = np.hypot(xx - rng.uniform(0, width), yy - rng.uniform(0, height))
        m = 0.5 + 0.5 * np.sin(r / rng.uniform(0.8, 4))
    elif kind == "blocky":  # plateaus: many equal values
        cells = rng.integers(0, 4, (height // 4 + 1, width // 4 + 1)) / 3
        m = np.kron(cells, np.ones((4, 4)))[:height, :width]
    elif kind == "constant":
        m = np.full((height, width), rng.uniform(0, 1))
    elif kind == "zeros":
        m = np.zeros((height, width))
    elif kind == "pixel":  # one-pixel objects
        m = np.zeros((height, width))
        for _ in range(rng.integers(1, 4)):
            m[rng.integers(0, height), rng.integers(0, width)] = rng.uniform(0.2, 1)
    elif kind == "border":  # mass on the image border
        m = np.maximum(np.exp(-xx / rng.uniform(1, 6)), np.exp(-(height - 1 - yy) / rng.uniform(1, 6)))
        m += rng.uniform(0, 0.2) * rng.random((height, width))
    elif kind == "camlike":  # smooth bumps with holes and islands at many levels, like real CAMs
        m = cv2.resize(rng.normal(0, 1, (max(2, height // 8), max(2, width // 8))), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    elif kind == "bars":  # thin lines, diagonals, touching corners
        m = np.zeros((height, width))
        m[:, rng.integers(0, width)] = 1
        m[rng.integers(0, height), :] = 0.7
        k = np.arange(min(height, width))
        m[k, k] = 0.5
    else:
        raise ValueError(kind)
    lo, hi = m.min(), m.max()
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m) if kind != "constant" else m
    return m.astype(np.float32 if rng.random() < 0.5 else np.float64)


def random_gt_boxes(height: int, width: int, rng: np.random.Generator, many: bool = False) -> np.ndarray:
    boxes = []
    for _ in range(rng.integers(1, 8 if many else 4)):
        x0, x1 = np.sort(rng.integers(0, width, 2))
        y0, y1 = np.sort(rng.integers(0, height, 2))
        boxes.append([x0, y0, x1, y1])
    return np.array(boxes, dtype=np.int64)
