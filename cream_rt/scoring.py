"""Scoring a model over a wsolevaluation split: the batches it is fed and the streaming
metrics of its maps and logits. Shared by `cream eval`, `cream parity`, training's validation,
the demo and the accuracy suite. Torch-free."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import CreamError
from .evaluate import gt_boxes_at
from .metadata import SplitMetadata
from .metrics import BoxEvaluator
from .preprocess import preprocess_batch, read_image
from .progress import progress

__all__ = ["batches", "split_batches", "predict_split", "check_labels", "SplitScorer"]

Predict = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def batches(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive chunks of `size` items (the last one shorter)."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def split_batches(meta: SplitMetadata, images: Path, batch_size: int, input_size: int, mean, std,
                  desc: str) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Yield (image ids, normalised `(B,3,S,S)` float32 batch, GT class ids) over the split."""
    ids = meta.image_ids
    for chunk in progress(batches(ids, batch_size), desc, total=-(-len(ids) // batch_size), unit="batch"):
        x = preprocess_batch([read_image(images / i) for i in chunk], input_size, mean, std)
        yield chunk, x, np.array([meta.class_labels[i] for i in chunk], dtype=np.int64)


def predict_split(predict: Predict, meta: SplitMetadata, images: Path, batch_size: int, input_size: int,
                  mean, std, desc: str) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Yield (image ids, logits `(B,C)`, GT-class maps `(B,S,S)`) over the split, where
    `predict(x, class_ids) -> (logits, maps)` works on numpy arrays."""
    for chunk, x, labels in split_batches(meta, images, batch_size, input_size, mean, std, desc):
        logits, maps = predict(x, labels)
        yield chunk, logits, maps


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

    def result(self) -> dict:
        """The wsolevaluation metrics plus `classification_top1`."""
        out = self.evaluator.result()
        out["classification_top1"] = 100.0 * self.correct1 / out["num_images"]
        return out
