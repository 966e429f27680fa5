"""Boxes from score maps with the exact semantics of the wsolevaluation protocol, IoU, and box
geometry (fractions, original-image coordinates).

Protocol (docs/evaluation.md): `img = uint8(map * 255)` (in the map's dtype),
`thr = int(tau * max(img))`, foreground = `img > thr`, OpenCV contours (RETR_TREE, holes
included), box `[x, y, min(x+w, W-1), min(y+h, H-1)]` of each contour's bounding rect.
`boxes_at_threshold` is OpenCV at one threshold (the runtime's path, and the evaluator's when
numba is missing); `box_sweep.threshold_ious` computes every threshold of a map at once.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["NO_BOX", "PAS_PERCENTILE", "PAS_THETA", "reference_level", "quantize", "threshold_levels",
           "boxes_at_threshold", "iou_matrix", "box_to_fractions", "fractions_to_box", "map_boxes", "scale_boxes"]



NO_BOX = np.zeros((1, 4), dtype=np.int64)


def quantize(scoremap: np.ndarray) -> np.ndarray:
    """`uint8(map * 255)` computed in the map's own dtype, as wsolevaluation does."""
    return (scoremap * 255).astype(np.uint8)


PAS_PERCENTILE = 90  # RCAM's percentile as a standard
PAS_THETA = 0.35  # its box threshold, where the max-relative one is 0.2


def reference_level(img: np.ndarray, pas: bool = False) -> float:
    """What score thresholds are fractions of: `max(img)` (the protocol), or with RCAM's PaS
    the 90th percentile of the uint8 map (NumPy's linear interpolation)."""
    return float(np.percentile(img, PAS_PERCENTILE)) if pas else float(img.max())


def box_to_fractions(box, width: int, height: int) -> list[float]:
    """An inclusive pixel box `[x0, y0, x1, y1]` as fractions of the image, the end exclusive:
    `[x0 / W, y0 / H, (x1 + 1) / W, (y1 + 1) / H]` (what the box regressor predicts)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0 / width, y0 / height, (x1 + 1) / width, (y1 + 1) / height]


def fractions_to_box(fractions, width: int, height: int) -> list[int]:
    """The inverse of `box_to_fractions`, rounded to whole pixels and kept inside the image
    (at least one pixel wide and high)."""
    f0, f1, f2, f3 = (min(max(float(v), 0.0), 1.0) for v in fractions)
    x0, y0 = min(int(round(f0 * width)), width - 1), min(int(round(f1 * height)), height - 1)
    x1, y1 = max(int(round(f2 * width)) - 1, x0), max(int(round(f3 * height)) - 1, y0)
    return [x0, y0, min(x1, width - 1), min(y1, height - 1)]


def threshold_levels(reference: float, thresholds: np.ndarray) -> np.ndarray:
    """The integer cut `int(tau * reference)` for each threshold tau (float64, truncation)."""
    return (np.asarray(thresholds, dtype=np.float64) * float(reference)).astype(np.int64)


def _contours(img: np.ndarray, level: int, mode: int = cv2.RETR_TREE):
    _, foreground = cv2.threshold(img, level, 255, cv2.THRESH_BINARY)  # 255 where img > level
    return cv2.findContours(foreground, mode, cv2.CHAIN_APPROX_SIMPLE)[0]


def _contour_areas(contours) -> np.ndarray:
    """cv2.contourArea of each contour (shoelace in float64), vectorised over all contours."""
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    nxt = np.arange(len(pts)) + 1
    nxt[starts + lengths - 1] = starts  # close each polygon
    cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    return np.abs(np.add.reduceat(cross, starts)) * 0.5


def _rects_to_boxes(contours, width: int, height: int) -> np.ndarray:
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    x, y, w, h = rects.T
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def boxes_at_threshold(img: np.ndarray, level: int, all_contours: bool) -> np.ndarray:
    """Boxes `(n, 4)` int64 of the uint8 map `img` at integer cut `level` (foreground `> level`):
    all contours (MaxBoxAccV2) or the largest (v1, first on ties); `[[0,0,0,0]]` if none."""
    height, width = img.shape
    if not all_contours:
        # The largest contour is always an outer one (a hole or an island is smaller than the
        # contour around it), so outer contours suffice unless two share the largest area:
        # then RETR_TREE decides, as the protocol takes the first in its order.
        outer = _contours(img, level, cv2.RETR_EXTERNAL)
        if len(outer) == 0:
            return NO_BOX.copy()
        if len(outer) == 1:
            return _rects_to_boxes(outer, width, height)
        areas = _contour_areas(outer)
        if (areas == areas.max()).sum() == 1:
            return _rects_to_boxes([outer[int(np.argmax(areas))]], width, height)
    contours = _contours(img, level)
    if len(contours) == 0:
        return NO_BOX.copy()
    if not all_contours and len(contours) > 1:
        contours = [contours[int(np.argmax(_contour_areas(contours)))]]
    return _rects_to_boxes(contours, width, height)


def iou_matrix(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU `(n, m)` with the inclusive (+1) pixel convention, float64."""
    a = np.asarray(boxes, dtype=np.int64)[:, None, :]
    b = np.asarray(gt_boxes, dtype=np.int64)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def map_boxes(scoremap: np.ndarray, threshold: float, all_contours: bool, pas: bool = False) -> np.ndarray:
    """Boxes of a [0,1] map at `threshold` of its max (of its 90th percentile with `pas`), with
    the protocol's semantics."""
    img = quantize(scoremap)
    return boxes_at_threshold(img, int(threshold * reference_level(img, pas)), all_contours)


def scale_boxes(boxes: np.ndarray, map_size: int, width: int, height: int) -> list[list[float]]:
    """Map-resolution boxes to the original image's pixel coordinates."""
    sx, sy = width / map_size, height / map_size
    out = []
    for x0, y0, x1, y1 in boxes.tolist():
        out.append([round(x0 * sx, 2), round(y0 * sy, 2), round(min((x1 + 1) * sx - 1, width - 1), 2),
                    round(min((y1 + 1) * sy - 1, height - 1), 2)])
    return out
