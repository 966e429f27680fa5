"""A deliberately plain implementation of the wsolevaluation box protocol: per image, per
threshold, OpenCV contours, Python loops, float64. It shares no code with cream_rt so that
tests and benchmarks compare the fast evaluator against an independent reference.
Written from docs/evaluation.md (the protocol of clovaai/wsolevaluation). With it, CAM-like maps
built from ground-truth boxes (`cam_like_map`: no images needed) to run both on real boxes."""
from __future__ import annotations

import cv2
import numpy as np


def percentile90(img: np.ndarray) -> float:
    """The 90th percentile by hand: sorted values, linear interpolation at rank 0.9 * (n - 1)."""
    values = sorted(int(v) for v in img.ravel())
    rank = 0.9 * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (rank - low) * (values[high] - values[low])


def reference_boxes(scoremap: np.ndarray, threshold: float, all_contours: bool, pas: bool = False) -> list[list[int]]:
    """Boxes of one map at one threshold, exactly as the protocol describes; with `pas` (RCAM's
    percentile as a standard) the threshold is a fraction of the 90th percentile, not the max."""
    height, width = scoremap.shape
    img = (scoremap * 255).astype(np.uint8)
    reference = percentile90(img) if pas else np.max(img)
    _, binary = cv2.threshold(img, int(threshold * reference), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    if not all_contours:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def reference_iou(a: list[int], b: list[int]) -> float:
    """IoU with the inclusive (+1) convention."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def reference_max_box_acc(scoremaps: list[np.ndarray], gt_boxes: list[list[list[int]]],
                          interval: float = 0.01, all_contours: bool = True,
                          iou_thresholds=(30, 50, 70), correct_class=None, pas: bool = False) -> dict:
    """MaxBoxAcc per IoU threshold (and their mean) over a list of maps, with GT boxes already
    at map resolution. `correct_class[i]` False drops image i (Top-1/Top-5 Loc)."""
    thresholds = np.arange(0, 1, interval)
    correct = {d: np.zeros(len(thresholds)) for d in iou_thresholds}
    for i, (scoremap, gts) in enumerate(zip(scoremaps, gt_boxes)):
        for k, tau in enumerate(thresholds):
            best = 0.0
            for box in reference_boxes(scoremap, float(tau), all_contours, pas):
                for gt in gts:
                    best = max(best, reference_iou(box, gt))
            if correct_class is not None and not correct_class[i]:
                continue
            for d in iou_thresholds:
                if best >= d / 100:
                    correct[d][k] += 1
    per_iou = {d: float((correct[d] * 100.0 / len(scoremaps)).max()) for d in iou_thresholds}
    best_thr = {d: float(thresholds[int(np.argmax(correct[d]))]) for d in iou_thresholds}
    return {"per_iou": per_iou, "mean": float(np.average(list(per_iou.values()))),
            "thresholds": best_thr, "counts": correct}


def cam_like_map(gt_boxes: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                 feature: int = 14, noise: float = 0.08) -> np.ndarray:
    """One float32 map `size` in [0, 1] for GT boxes given at map resolution, like a real 14x14
    CAM: a peaked blob on part of each object, weaker distractors, low-resolution noise of
    standard deviation `noise` (0: blobs only, no holes), bicubic upsampling and minmax."""
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
