"""`cream fit-embeddings`: CREAM's context embeddings of a trained CAM model, classifier frozen
and no gradient (docs/method.md 3.1), by one of three estimators, one entry each: the embedding
pass `cream train` ends with (`fit_embeddings`), the paper's momentum rule over augmented images
(`fit_embeddings_momentum`), or refinement of the checkpoint's own embeddings (`refine_checkpoint`)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cream_rt.config import CAM_LAYER, REFINE_ROUNDS
from cream_rt.errors import CreamError
from cream_rt.metadata import SplitMetadata, data_paths, read_split
from cream_rt.model.backbones import get_backbone
from cream_rt.model.checkpoint import load_checkpoint, save_checkpoint
from cream_rt.model.network import CamModel
from cream_rt.progress import progress
from cream_rt.unreadable import MAX_BAD_IMAGES, UnreadableImages

from .data import ReadableBatches, WsolImages, split_loader
from .refine import embedding_pass, refine_embeddings, warn_fallback
from .trainer import check_images_exist, seed_everything, split_batches_of

__all__ = ["SplitOptions", "fit_embeddings", "fit_embeddings_momentum", "refine_checkpoint"]


@dataclass(frozen=True)
class SplitOptions:
    """Where the train split's images and metadata are and how they are read."""

    images: str | None = None  # image root (default DATA/images)
    metadata: str | None = None  # metadata root (default DATA/metadata)
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    max_bad_images: int = MAX_BAD_IMAGES  # unreadable images skipped and recorded; more stop the run


# an estimator: (model, batches(desc), center, unreadable) -> (record key, record)
Estimator = Callable[[CamModel, Callable, bool | None, UnreadableImages], tuple[str, dict]]


def fit_embeddings(checkpoint: str, data: str | None, out: str, *, rounds: int = REFINE_ROUNDS,
                   center: bool | None = None, em_layer: str | None = None, split: SplitOptions | None = None,
                   **cream) -> dict:
    """The embedding pass over the train split (evaluation transform): the feature center where
    `center` (default the checkpoint's), class means under the CAM's mask, then `rounds`
    refinement rounds (`train/refine.py`). `em_layer` (default the checkpoint's): the layer the EM
    clusters; moving to the backbone's default layer takes its default center unless `center` is
    given. `cream`: CreamConfig fields to change (feature_mean, embeddings, fallback, ...).

    Example:
        >>> fit_embeddings("imported.pt", "data/cub", "fitted.pt", em_layer="stage5.last")  # doctest: +SKIP
    """
    def estimate(model, batches, center, unreadable):
        center = model.config.cream.center if center is None else center
        return "embedding_pass", embedding_pass(model, batches("embedding pass"), center, rounds)

    return _fit(checkpoint, data, out, split or SplitOptions(), cream, em_layer, center, estimate)


def fit_embeddings_momentum(checkpoint: str, data: str | None, out: str, *, epochs: int = 1,
                            em_layer: str | None = None, split: SplitOptions | None = None, **cream) -> dict:
    """The paper's momentum rule over augmented train images for `epochs`, from fresh embeddings
    (`cream`: CreamConfig fields to change, momentum among them)."""
    def estimate(model, batches, center, unreadable):
        return "fit_embeddings", _momentum(model, batches, epochs, unreadable)

    return _fit(checkpoint, data, out, split or SplitOptions(), cream, em_layer, None, estimate)


def refine_checkpoint(checkpoint: str, data: str | None, out: str, *, rounds: int, em_layer: str | None = None,
                      split: SplitOptions | None = None, **cream) -> dict:
    """`rounds` refinement rounds of the checkpoint's own embeddings, the EM's calibrated
    responsibilities as soft masks over the train split (evaluation transform); `em_layer`, if
    given, must be the checkpoint's (its embeddings are of that layer)."""
    def estimate(model, batches, center, unreadable):
        return "refine_embeddings", {"rounds": rounds, "history": refine_embeddings(model, batches("refine"), rounds)}

    return _fit(checkpoint, data, out, split or SplitOptions(), cream, em_layer, None, estimate, keep_layer=True)


class _Batches:
    """`batches(desc)`: a callable yielding the split's (images, labels), evaluation transform."""

    def __init__(self, model: CamModel, meta: SplitMetadata, image_root: Path, options: SplitOptions,
                 unreadable: UnreadableImages):
        self.model, self.meta, self.image_root = model, meta, image_root
        self.options, self.unreadable = options, unreadable

    def __call__(self, desc: str):
        o = self.options
        return split_batches_of(self.model, self.meta, self.image_root, o.batch_size, o.device, desc, self.unreadable)


def _fit(checkpoint: str, data: str | None, out: str, options: SplitOptions, cream: dict, em_layer: str | None,
         center: bool | None, estimate: Estimator, keep_layer: bool = False) -> dict:
    """Load, check, move to `em_layer` (refused with `keep_layer`), change `cream`, run the
    estimator, save: the steps every estimator shares."""
    image_root, meta_root = data_paths(data, options.images, options.metadata)
    model, payload = load_checkpoint(checkpoint)
    meta = read_split(meta_root / "train", require_localization=False)
    check_images_exist(meta, image_root)
    if meta.num_classes > model.config.num_classes:
        raise CreamError(f"{meta_root / 'train'}: class label {meta.num_classes - 1} is out of range for a "
                         f"model with {model.config.num_classes} classes")
    if em_layer is not None and em_layer != CAM_LAYER:
        em_layer = model.backbone.resolve_layer(em_layer)  # a place named by stage: its layer
    if em_layer is not None and em_layer != model.em_layer:
        if keep_layer:
            raise CreamError(f"--em-layer {em_layer}: the checkpoint's embeddings are of another layer "
                             f"({model.em_layer}); expected --estimate pass, or momentum without --refine")
        model = model.with_em_layer(em_layer)
        shipped = get_backbone(model.config.backbone).cream_defaults(model.config.stock_strides)
        if center is None and model.em_layer == model.backbone.resolve_layer(shipped.em_layer):
            center = shipped.center  # the backbone's default layer: its default center
    try:
        model.config = model.config.with_cream(**{k: v for k, v in cream.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise CreamError(str(exc)) from None
    seed_everything(options.seed)
    model.to(options.device).eval()  # frozen: BN statistics untouched
    unreadable = UnreadableImages(options.max_bad_images)
    key, record = estimate(model, _Batches(model, meta, image_root, options, unreadable), center, unreadable)
    record["unreadable_images"] = unreadable.record()
    training = dict(payload.get("training", {}))
    training[key] = {"from": str(checkpoint), **record}
    save_checkpoint(out, model, training)
    unreadable.warn("fit-embeddings")
    return {"checkpoint": os.fspath(out), "images": len(meta.image_ids) - len(unreadable), key: record}


def _momentum(model: CamModel, batches: _Batches, epochs: int, unreadable: UnreadableImages) -> dict:
    """The paper's momentum rule over augmented training images for `epochs`, from fresh
    embeddings; returns its record."""
    cfg, o = model.config, batches.options
    model.reset_embeddings()
    data_set = WsolImages(batches.meta, batches.image_root, cfg.input_size, cfg.mean, cfg.std, train=True,
                          seed=o.seed)
    for epoch in range(epochs):
        data_set.epoch = epoch
        loader = split_loader(data_set, batch_size=o.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(o.seed + epoch))
        with torch.no_grad():
            for x, y in progress(ReadableBatches(loader, unreadable), f"embeddings {epoch + 1}/{epochs}",
                                 unit="batch"):
                model.update_embeddings(model.features(x.to(o.device)), y.to(o.device))
    model.fill_unfitted()
    return {"epochs": epochs, "momentum": cfg.cream.momentum, "feature_mean": cfg.cream.feature_mean, "seed": o.seed,
            **warn_fallback(model, "fit-embeddings")}
