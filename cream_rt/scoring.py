"""Scoring a model over a wsolevaluation split: the batches it is fed and the streaming
metrics of its maps and logits. Shared by `cream eval`, `cream parity`, training's validation,
the demo and the accuracy suite. Torch-free."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .boxes import fractions_to_box, iou_matrix
from .errors import CreamError
from .evaluate import gt_boxes_at
from .metadata import SplitMetadata
from .metrics import BoxEvaluator, ImageBoxResult
from .preprocess import preprocess_batch, read_image
from .progress import progress
from .unreadable import UnreadableImages

__all__ = ["batches", "split_batches", "check_labels", "SplitScorer"]

def batches(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive chunks of `size` items (the last one shorter)."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def split_batches(meta: SplitMetadata, images: Path, batch_size: int, input_size: int, mean, std,
                  desc: str, unreadable: UnreadableImages | None = None,
                  scorers: Iterable["SplitScorer"] = ()) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Yield (image ids, normalised `(B,3,S,S)` float32 batch, GT class ids) over the split. An
    image that cannot be decoded raises, or with `unreadable` is recorded there, left out of
    its batch and scored as a miss by each of `scorers`."""
    ids = meta.image_ids
    scorers = list(scorers)
    for chunk in progress(batches(ids, batch_size), desc, total=-(-len(ids) // batch_size), unit="batch"):
        arrays = [read_image(images / i) if unreadable is None else unreadable.read(images / i, i) for i in chunk]
        for image_id in (i for i, a in zip(chunk, arrays) if a is None):
            for scorer in scorers:
                scorer.add_unreadable(image_id)
        chunk = [i for i, a in zip(chunk, arrays) if a is not None]
        if chunk:
            x = preprocess_batch([a for a in arrays if a is not None], input_size, mean, std)
            yield chunk, x, np.array([meta.class_labels[i] for i in chunk], dtype=np.int64)


def check_labels(meta: SplitMetadata, num_classes: int, model: str) -> None:
    """Before any work: every class label of the split is one the model has."""
    bad = next((i for i in meta.image_ids if meta.class_labels[i] >= num_classes), None)
    if bad is not None:
        raise CreamError(f"{meta.root / 'class_labels.txt'}: image {bad!r} has class label "
                         f"{meta.class_labels[bad]}, out of range for {model} with {num_classes} classes")


class SplitScorer:
    """Streaming scores of one kind of map over a split: box metrics of the GT-class maps, plus
    classification and Top-1/Top-5 Loc from the logits. Nothing per image is kept; with
    `save_maps`, each map is also written as `<image_id>.npy` under that folder; `pas` makes
    the box thresholds fractions of each map's 90th percentile (RCAM's PaS)."""

    def __init__(self, meta: SplitMetadata, map_size: int, interval: float, save_maps: Path | None = None,
                 pas: bool = False):
        self.meta, self.map_size, self.save_maps = meta, map_size, save_maps
        self.evaluator = BoxEvaluator(interval, (map_size, map_size), pas=pas)
        self.correct1 = 0
        self.boxes_only = False  # set by add_boxes: a regressor's boxes, not maps

    def add(self, chunk: list[str], logits: np.ndarray, maps: np.ndarray) -> None:
        """Score one batch: `chunk` image ids, their logits `(B,C)` and GT-class maps `(B,S,S)`."""
        top5 = np.argsort(-logits, axis=1)[:, :5]
        for i, image_id in enumerate(chunk):
            label = self.meta.class_labels[image_id]
            if label >= logits.shape[1]:
                raise CreamError(f"{image_id}: class label {label} is out of range for a model "
                                 f"with {logits.shape[1]} classes")
            is_top1 = bool(top5[i, 0] == label)
            self.correct1 += is_top1
            if self.save_maps:
                path = self.save_maps / f"{image_id}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, maps[i])
            size = (self.map_size, self.map_size)
            self.evaluator.add(maps[i], gt_boxes_at(self.meta, image_id, size), top1_correct=is_top1,
                               top5_correct=bool(label in top5[i]), name=image_id)

    def add_unreadable(self, image_id: str) -> None:
        """An image that could not be decoded: a miss at every threshold and a wrong class."""
        self.evaluator.accumulate(None, False, False, image_id)

    def add_boxes(self, chunk: list[str], logits: np.ndarray | None, boxes: np.ndarray) -> None:
        """Score one batch of predicted boxes `(B,4)` (fractions of the image, a box regressor's
        output) as boxes: each box's IoU with the GT boxes counts at every score threshold, so
        MaxBoxAccV2 becomes the mean over IoU 0.3/0.5/0.7 of the share of images whose box
        reaches it, and GT-known Loc the share at IoU 0.5. Top-1/Top-5 Loc need `logits`."""
        size = (self.map_size, self.map_size)
        top5 = None if logits is None else np.argsort(-logits, axis=1)[:, :5]
        n = len(self.evaluator.thresholds)
        for i, image_id in enumerate(chunk):
            box = np.array([fractions_to_box(boxes[i], self.map_size, self.map_size)])
            iou = float(iou_matrix(box, np.asarray(gt_boxes_at(self.meta, image_id, size)).reshape(-1, 4)).max())
            label = self.meta.class_labels[image_id]
            top1 = None if top5 is None else bool(top5[i, 0] == label)
            self.correct1 += bool(top1)
            self.evaluator.accumulate(ImageBoxResult(np.full(n, iou), np.full(n, iou)), top1,
                                      None if top5 is None else bool(label in top5[i]), image_id)
        self.boxes_only = True

    def result(self) -> dict:
        """The wsolevaluation metrics plus `classification_top1` (when logits were given)."""
        out = self.evaluator.result()
        if self.evaluator.count_with_classes or not self.boxes_only:
            out["classification_top1"] = 100.0 * self.correct1 / out["num_images"]
        if self.boxes_only:
            out["box_source"] = "regressor"
        return out
