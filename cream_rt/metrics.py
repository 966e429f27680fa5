"""WSOL metrics of the wsolevaluation protocol, accumulated image by image (streaming):
MaxBoxAccV2 (all contours, IoU 30/50/70), MaxBoxAcc v1 / GT-known Loc (largest contour,
IoU 50), Top-1 / Top-5 Loc, and PxAP for mask data sets. No torch."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from .box_sweep import compile_kernels, quantize_checked, threshold_ious
from .errors import MetadataError, ScoreMapError

__all__ = ["IOU_THRESHOLDS", "PXAP_EXTRA_EDGES", "threshold_list", "check_scoremap", "ImageBoxResult",
           "image_box_ious", "BoxEvaluator", "parallel_map", "load_gt_mask", "PxAPEvaluator"]

IOU_THRESHOLDS = (30, 50, 70)
PXAP_EXTRA_EDGES = (1.0, 2.0, 3.0)


def threshold_list(interval: float) -> np.ndarray:
    """The score-map thresholds `np.arange(0, 1, interval)` of the protocol."""
    if not 0 < interval < 1:
        raise ValueError(f"threshold interval must lie in (0, 1), got {interval}")
    return np.arange(0, 1, interval)


def check_scoremap(scoremap: np.ndarray, shape: Sequence[int] | None, name: str) -> np.ndarray:
    """The uint8 quantised map; raises ScoreMapError naming the image if the map is not a
    finite 2-D float map in [0, 1] (of `shape` when given)."""
    if not isinstance(scoremap, np.ndarray) or scoremap.ndim != 2:
        got = getattr(scoremap, "shape", type(scoremap).__name__)
        raise ScoreMapError(f"{name}: score map must be a 2-D array, got shape {got}")
    if shape is not None and scoremap.shape != tuple(shape):
        raise ScoreMapError(f"{name}: score map must have shape {tuple(shape)}, got {scoremap.shape}")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise ScoreMapError(f"{name}: score map must be float, got {scoremap.dtype}")
    img, has_nan, lo, hi = quantize_checked(scoremap)
    if has_nan:
        raise ScoreMapError(f"{name}: score map contains NaN")
    if lo < 0 or hi > 1:
        raise ScoreMapError(f"{name}: score map values must lie in [0, 1], got [{lo:g}, {hi:g}]")
    return img


@dataclass
class ImageBoxResult:
    """Per-threshold best IoU of one image (all contours and largest contour)."""

    iou_all: np.ndarray
    iou_largest: np.ndarray


def image_box_ious(scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
                   shape: Sequence[int] | None = None, name: str = "map", pas: bool = False) -> ImageBoxResult:
    """Check one map, then its best IoU with the GT boxes at each threshold for both contour
    rules (thresholds relative to the map's max, or with `pas` to its 90th percentile)."""
    return ImageBoxResult(*threshold_ious(check_scoremap(scoremap, shape, name), thresholds, gt_boxes, pas))


class BoxEvaluator:
    """Accumulates correct-box counts per IoU threshold and score threshold; `result()` gives
    MaxBoxAccV2, MaxBoxAcc (v1), GT-known Loc, and Top-1/Top-5 Loc when classes were given.

    Example:
        >>> evaluator = BoxEvaluator(map_size=(224, 224))  # doctest: +SKIP
        >>> evaluator.add(scoremap, gt_boxes)  # doctest: +SKIP
        >>> evaluator.result()["MaxBoxAccV2"]  # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.01, map_size: Sequence[int] = (224, 224),
                 iou_thresholds: tuple[int, ...] = IOU_THRESHOLDS, pas: bool = False):
        compile_kernels()  # before the first map, with a logged line when the cache is cold
        self.thresholds = threshold_list(interval)
        self.pas = pas  # RCAM's percentile as a standard: thresholds relative to the 90th percentile
        self.map_size = tuple(map_size)
        self.iou_thresholds = tuple(iou_thresholds)
        n = len(self.thresholds)
        self.correct_all = {d: np.zeros(n, np.int64) for d in self.iou_thresholds}
        self.correct_largest = {d: np.zeros(n, np.int64) for d in self.iou_thresholds}
        self.correct_top1 = np.zeros(n, np.int64)
        self.correct_top5 = np.zeros(n, np.int64)
        self.count = 0
        self.count_with_classes = 0
        self.missing: list[str] = []

    def compute(self, scoremap: np.ndarray, gt_boxes: np.ndarray, name: str = "map") -> ImageBoxResult:
        """Check one map and compute its per-threshold IoUs (thread-safe; no accumulation)."""
        return image_box_ious(scoremap, gt_boxes, self.thresholds, self.map_size, name, self.pas)

    def accumulate(self, result: ImageBoxResult | None, top1_correct: bool | None = None,
                   top5_correct: bool | None = None, name: str | None = None) -> None:
        """Add one image; `result=None` is a missing map, counted as a miss at every threshold."""
        self.count += 1
        if top1_correct is not None:
            self.count_with_classes += 1
        if result is None:
            self.missing.append(name or "?")
            return
        for d in self.iou_thresholds:
            self.correct_all[d] += result.iou_all >= d / 100
            self.correct_largest[d] += result.iou_largest >= d / 100
        hit = result.iou_largest >= 0.5
        if top1_correct:
            self.correct_top1 += hit
        if top5_correct:
            self.correct_top5 += hit

    def add(self, scoremap: np.ndarray, gt_boxes: np.ndarray, top1_correct: bool | None = None,
            top5_correct: bool | None = None, name: str = "map") -> None:
        """Check and accumulate one map with its GT boxes (at map resolution)."""
        self.accumulate(self.compute(scoremap, gt_boxes, name), top1_correct, top5_correct, name)

    def _best(self, counts: np.ndarray, total: int) -> tuple[float, float]:
        accuracy = counts * 100.0 / float(total)
        k = int(np.argmax(accuracy))
        return float(accuracy[k]), float(self.thresholds[k])

    def result(self) -> dict:
        """The metrics with the chosen score thresholds, as a JSON-ready dict."""
        if self.count == 0:
            raise ValueError("no image was evaluated")
        per_iou, thr_v2 = {}, {}
        for d in self.iou_thresholds:
            per_iou[str(d)], thr_v2[str(d)] = self._best(self.correct_all[d], self.count)
        v1, thr_v1 = self._best(self.correct_largest[50], self.count)
        out = {
            "MaxBoxAccV2": float(np.average(list(per_iou.values()))),
            "MaxBoxAccV2_per_iou": per_iou,
            "MaxBoxAccV2_thresholds": thr_v2,
            "MaxBoxAcc": v1,
            "MaxBoxAcc_threshold": thr_v1,
            "GT_known_Loc": v1,
            "GT_known_Loc_contour": "largest",
            "num_images": self.count,
            "num_missing": len(self.missing),
            "threshold_reference": "percentile90" if self.pas else "max",
            "threshold_interval": float(self.thresholds[1] - self.thresholds[0]) if len(self.thresholds) > 1 else 1.0,
        }
        if self.count_with_classes:
            out["Top1_Loc"], out["Top1_Loc_threshold"] = self._best(self.correct_top1, self.count)
            out["Top5_Loc"], out["Top5_Loc_threshold"] = self._best(self.correct_top5, self.count)
        return out


def parallel_map(fn, items: Iterable, workers: int | None = None, chunk: int = 64) -> Iterator:
    """`map(fn, items)` in order on a thread pool (numba's sweep and OpenCV release the GIL),
    holding at most a few chunks in flight so a data set never sits in memory."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= chunk * workers:
                yield from (f.result() for f in pending[:chunk])
                pending = pending[chunk:]
        yield from (f.result() for f in pending)


def load_gt_mask(mask_root: str, mask_paths: list[str], ignore_path: str,
                 size: Sequence[int]) -> np.ndarray:
    """GT mask as the protocol builds it: union of instance masks (nearest resize, > 0.5);
    1 = foreground, 0 = background, 255 = ignored (ignore box minus foreground)."""

    def read(rel: str) -> np.ndarray:
        path = os.path.join(mask_root, rel)
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise MetadataError(f"{path}: mask image missing or unreadable")
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0.5

    foreground = np.stack([read(p) for p in mask_paths]).any(axis=0)
    ignore = read(ignore_path) & ~foreground
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)


class PxAPEvaluator:
    """Pixel average precision: histograms of foreground / background scores over the split."""

    def __init__(self, interval: float = 0.001, map_size: Sequence[int] = (224, 224)):
        self.edges = np.append(threshold_list(interval), PXAP_EXTRA_EDGES)
        self.map_size = tuple(map_size)
        self.fg_hist = np.zeros(len(self.edges) - 1, np.float64)
        self.bg_hist = np.zeros(len(self.edges) - 1, np.float64)
        self.count = 0

    def add(self, scoremap: np.ndarray, gt_mask: np.ndarray, name: str = "map") -> None:
        check_scoremap(scoremap, self.map_size, name)
        self.fg_hist += np.histogram(scoremap[gt_mask == 1], bins=self.edges)[0]
        self.bg_hist += np.histogram(scoremap[gt_mask == 0], bins=self.edges)[0]
        self.count += 1

    def result(self) -> dict:
        """PxAP = 100 * sum_j precision_j * (recall_j - recall_{j-1}), thresholds high to low,
        thresholds with no predicted positive skipped."""
        tp = self.fg_hist[::-1].cumsum()
        fp = self.bg_hist[::-1].cumsum()
        num_fg = self.fg_hist.sum()
        if num_fg <= 0:
            raise ValueError("no foreground pixel in the evaluated masks")
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        recall = tp / num_fg
        area = precision[1:] * np.diff(recall)
        return {"PxAP": float(area[~np.isnan(area)].sum() * 100), "num_images": self.count}
