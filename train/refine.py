"""The embedding pass: the context embeddings estimated with the final network over the
training split, after training or for any trained CAM model.

- Center: with `CreamConfig.center`, the split's mean feature is stored in `model.feature_center`
  and every side mean below is taken of the features minus it.
- Class means: each class's embeddings are the mean over its images of the side means under the
  CAM's hard mask {minmax(CAM) >= tau}: the fixed point the momentum rule of docs/method.md 3.1
  approaches, from eval-mode features of the final weights (the momentum rule during training
  averages its last few augmented, train-mode samples).
- Refinement rounds: the EM's calibrated responsibilities (the model's own T, beta, calibration,
  start) replace the hard mask as soft masks, and the class means are taken again.
- Classes without an image in the split get the class-agnostic pair (`CamModel.fill_unfitted`:
  `CreamConfig.fallback`), and under `embeddings: agnostic` every class does.
No gradient; the classifier is frozen."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch

from cream_rt.errors import CreamError
from cream_rt.model.em import centered, l2_normalize, minmax, side_means

__all__ = ["ImageSplit", "embedding_pass", "split_pass", "refine_embeddings", "warn_fallback"]

_log = logging.getLogger(__name__)

# features of the whole split stay in memory up to this size; beyond it each round recomputes them
CACHE_BYTES = 1 << 30

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
# what the pass reads per batch: the EM layer's features `(B,K,h,w)`, the CAM of the label `(B,h,w)`, labels `(B,)`
EmBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ImageSplit:
    """The pass's input from image batches: (EM features, CAM of the label, labels) per batch,
    computed once and kept while they fit in CACHE_BYTES, recomputed on every pass otherwise."""

    def __init__(self, model, batches: Batches):
        self.model, self.batches = model, batches
        self.cache: list[EmBatch] | None = None
        self.cacheable = True

    def __iter__(self) -> Iterator[EmBatch]:
        if self.cache is not None:
            yield from self.cache
            return
        filling: list | None = [] if self.cacheable else None
        filled_bytes = 0
        for x, y in self.batches():
            features = self.model.features(x)
            # a copy of the EM layer's channels: a view would keep the CAM's channels alive in the cache
            item = (self.model.em_features(features).contiguous(), self.model.cam(features, y), y)
            if filling is not None:
                filled_bytes += item[0].numel() * item[0].element_size()
                if filled_bytes <= CACHE_BYTES:
                    filling.append(item)
                else:
                    filling, self.cacheable = None, False
            yield item
        if filling is not None:
            self.cache = filling


class ClassMeans(NamedTuple):
    """Per class the mean over its images of the side means `(C,2,K)` (zero for a class without
    images), which classes had images `(C,)`, and the mean over all images `(2,K)`."""

    embeddings: torch.Tensor
    fitted: torch.Tensor
    image_mean: torch.Tensor


def _class_means(model, split: Iterable[EmBatch], masks: Callable) -> ClassMeans:
    """The side means under `masks(em, cam, labels) (B,N)` of the (centered) features, per class."""
    unit = model.config.cream.feature_mean == "unit"
    sums = torch.zeros_like(model.embeddings)
    counts = torch.zeros(model.embeddings.shape[0], dtype=sums.dtype, device=sums.device)
    for em, cam, labels in split:
        means = side_means(centered(em.flatten(2).float(), model.center), masks(em, cam, labels), unit)
        sums.index_add_(0, labels, means)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    seen = counts > 0
    if not bool(seen.any()):
        raise CreamError("the embedding pass saw no readable image; expected a training split with images")
    new = torch.zeros_like(sums)
    new[seen] = sums[seen] / counts[seen].reshape(-1, 1, 1)
    return ClassMeans(new, seen, sums.sum(0) / counts.sum())


def _hard_mask(model):
    tau = model.config.cream.tau
    return lambda em, cam, labels: (minmax(cam.flatten(1).float(), (1,)) >= tau).float()


def _em_mask(model):
    """The calibrated responsibilities z~ `(B,N)` of the model's re-activation from its embeddings."""
    c = model.config.cream

    def mask(em, cam, labels):
        b, _, h, w = em.shape
        z = model.reactivation(em, cam, labels).calibrated
        if z.shape[-1] != h * w:  # a finer EM grid: back to feature cells
            z = torch.nn.functional.adaptive_avg_pool2d(z.reshape(b, 1, h * c.upsample, w * c.upsample),
                                                        (h, w)).reshape(b, -1)
        return z
    return mask


def _set(model, new: ClassMeans) -> float:
    """Replace the embeddings (the fallback for classes without images); returns the mean change
    of the rows (1 - cosine to the old ones)."""
    old = model.embeddings.clone()
    model.embeddings.copy_(new.embeddings)
    model.embedding_fitted.copy_(new.fitted)
    model.fill_unfitted(new.image_mean)
    return float(1 - (l2_normalize(model.embeddings, 2) * l2_normalize(old, 2)).sum(2).mean())


def warn_fallback(model, what: str, quiet: bool = False) -> dict:
    """The record of the classes without a pair of their own, with one warning (logged) where
    there are any: {"fallback": kind, "fallback_classes": count}."""
    c = model.config.cream
    count = int((~model.embedding_fitted).sum())
    kind = "agnostic pair" if c.embeddings == "agnostic" else c.fallback
    if count and not quiet:
        _log.warning("%s: %d of %d classes had no fitting image; they use the class-agnostic pair (%s)", what, count,
                     len(model.embedding_fitted), kind)
    return {"embeddings": c.embeddings, "fallback": c.fallback, "fallback_classes": count}


def _refine_rounds(model, split: Iterable[EmBatch], rounds: int, history: list[dict]) -> None:
    for round_index in range(rounds):
        change = _set(model, _class_means(model, split, _em_mask(model)))
        history.append({"round": round_index + 1, "mean_change": change})
        _log.info(f"refine round {round_index + 1}/{rounds}: mean change of the embeddings {change:.4f}")


@torch.no_grad()
def refine_embeddings(model, batches: Batches, rounds: int) -> list[dict]:
    """`rounds` refinement rounds of `model.embeddings` in place over `batches()` (images,
    labels: the training split, evaluation transform), from the embeddings it has; returns per
    round the mean change of the rows (1 - cosine to the previous round's)."""
    history: list[dict] = []
    _refine_rounds(model, ImageSplit(model, batches), rounds, history)
    return history


@torch.no_grad()
def embedding_pass(model, batches: Batches, center: bool, rounds: int) -> dict:
    """Set the feature center (with `center`, and `config.cream.center` with it), the class means
    under the CAM's hard mask and then `rounds` refinement rounds, over `batches()` (the training
    split, evaluation transform, model in eval mode). Returns the pass's record."""
    return split_pass(model, ImageSplit(model, batches), center, rounds)


@torch.no_grad()
def split_pass(model, split: Iterable[EmBatch], center: bool, rounds: int, quiet: bool = False) -> dict:
    """`embedding_pass` over a re-iterable `split` of (EM features, CAM of the label, labels)
    batches (e.g. features cached once for many settings, `cream tune`); `quiet`: no warning
    line for classes without images."""
    model.config = model.config.with_cream(center=center)
    if center:
        total: torch.Tensor | None = None
        cells = 0
        for features, _, _ in split:
            flat = features.transpose(0, 1).reshape(features.shape[1], -1).double()
            total = flat.sum(1) if total is None else total + flat.sum(1)
            cells += flat.shape[1]
        mean = total / max(cells, 1) if total is not None else torch.zeros_like(model.feature_center)
        model.feature_center.copy_(mean.to(model.feature_center.dtype))
        _log.info(f"embedding pass: feature center over {cells} cells, norm {float(model.feature_center.norm()):.3f}")
    change = _set(model, _class_means(model, split, _hard_mask(model)))
    _log.info(f"embedding pass: class means under the CAM's mask, mean change {change:.4f}")
    history: list[dict] = []
    _refine_rounds(model, split, rounds, history)
    return {"center": center, "refine_rounds": rounds, "class_means_change": change, "refine": history,
            **warn_fallback(model, "embedding pass", quiet)}
