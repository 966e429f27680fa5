"""Evaluate a checkpoint (eager torch) on a metadata split with the wsolevaluation protocol."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import CreamError
from ..evaluate import gt_boxes_at
from ..metadata import SplitMetadata
from ..metrics import BoxEvaluator
from ..preprocess import preprocess_batch, read_image
from ..progress import progress


def image_root(args: argparse.Namespace) -> Path:
    if getattr(args, "images", None):
        return Path(args.images)
    if getattr(args, "data", None):
        return Path(args.data) / "images"
    raise CreamError("pass --data DIR (with images/) or --images DIR")


def batches(ids: list[str], size: int):
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def predict_split(predict, meta: SplitMetadata, images: Path, batch_size: int, input_size: int,
                  mean, std, desc: str):
    """Yield (image_ids, logits (B,C), maps (B,S,S)) over the split, GT classes for the maps.
    `predict(x, class_ids) -> (logits, maps)` on numpy arrays."""
    ids = meta.image_ids
    for chunk in progress(batches(ids, batch_size), desc, total=-(-len(ids) // batch_size), unit="batch"):
        x = preprocess_batch([read_image(images / i) for i in chunk], input_size, mean, std)
        labels = np.array([meta.class_labels[i] for i in chunk], dtype=np.int64)
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
    classification and Top-1/Top-5 Loc from the logits. Nothing per image is kept."""

    def __init__(self, meta: SplitMetadata, map_size: int, interval: float, save_maps: Path | None = None):
        self.meta, self.map_size, self.save_maps = meta, map_size, save_maps
        self.evaluator = BoxEvaluator(interval, (map_size, map_size))
        self.correct1 = 0

    def add(self, chunk: list[str], logits: np.ndarray, maps: np.ndarray) -> None:
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
        out = self.evaluator.result()
        out["classification_top1"] = 100.0 * self.correct1 / out["num_images"]
        return out


def evaluate_model(args: argparse.Namespace, meta: SplitMetadata) -> dict:
    """`cream eval --checkpoint` (eager torch) or `--model` (ONNX Runtime, no torch)."""
    import contextlib

    from ..atomic import atomic_dir, check_output_dir

    images = image_root(args)
    if args.save_maps:
        check_output_dir(args.save_maps, "--save-maps")
    if args.model:
        from ..runtime import OnnxPredictor

        predictor = OnnxPredictor.load(args.model)
        num_classes = len(predictor.manifest.class_names)
    else:
        from ..model.device import torch_device
        from ..model.eager import EagerPredictor

        predictor = EagerPredictor.from_checkpoint(args.checkpoint, args.mode, args.iterations,
                                                   str(torch_device(args.device)))
        num_classes = predictor.model.config.num_classes
    check_labels(meta, num_classes, args.model or args.checkpoint)
    with contextlib.ExitStack() as stack:
        maps_dir = stack.enter_context(atomic_dir(args.save_maps, "--save-maps")) if args.save_maps else None
        scorer = SplitScorer(meta, predictor.input_size, args.interval, maps_dir)
        for chunk, logits, maps in predict_split(predictor, meta, images, args.batch_size, predictor.input_size,
                                                 predictor.mean, predictor.std, "eval"):
            scorer.add(chunk, logits, maps)
        out = scorer.result()
    out.update(predictor.describe())
    return out
