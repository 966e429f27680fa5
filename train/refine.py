"""The embedding pass (issue 23): the context embeddings estimated with the final network over the
training split, after training or for any trained CAM model.

- Center: with `CreamConfig.center`, the split's mean feature is stored in `model.feature_center`
  and every side mean below is taken of the features minus it.
- Class means: each class's embeddings are the mean over its images of the side means under the
  CAM's hard mask {minmax(CAM) >= tau}: the fixed point the momentum rule of docs/method.md 3.1
  approaches, from eval-mode features of the final weights (the momentum rule during training
  averages its last few augmented, train-mode samples).
- Refinement rounds: the EM's calibrated responsibilities (the model's own T, beta, calibration,
  start) replace the hard mask as soft masks, and the class means are taken again.
No gradient; the classifier is frozen."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from cream_rt.model.em import centered, l2_normalize, minmax, reactivation, side_means

__all__ = ["embedding_pass", "refine_embeddings"]

# features of the whole split stay in memory up to this size; beyond it each round recomputes them
CACHE_BYTES = 1 << 30

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class _SplitFeatures:
    """(features, labels) of the split per batch: read once and kept while they fit in
    CACHE_BYTES, recomputed on every pass otherwise."""

    def __init__(self, model, batches: Batches):
        self.model, self.batches = model, batches
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cacheable = True

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cache is not None:
            yield from self.cache
            return
        filling: list | None = [] if self.cacheable else None
        filled_bytes = 0
        for x, y in self.batches():
            features = self.model.features(x)
            if filling is not None:
                filled_bytes += features.numel() * features.element_size()
                if filled_bytes <= CACHE_BYTES:
                    filling.append((features, y))
                else:
                    filling, self.cacheable = None, False
            yield features, y
        if filling is not None:
            self.cache = filling


def _class_means(model, split: Iterable, masks: Callable) -> torch.Tensor:
    """`(C,2,K)`: per class, the mean over its images of the side means under `masks(features,
    labels) (B,N)` of the (centered) features; classes without images keep their embeddings."""
    unit = model.config.cream.feature_mean == "unit"
    sums = torch.zeros_like(model.embeddings)
    counts = torch.zeros(model.embeddings.shape[0], dtype=sums.dtype, device=sums.device)
    for features, labels in split:
        em = model.em_features(features)
        means = side_means(centered(em.flatten(2).float(), model.center), masks(features, labels), unit)
        sums.index_add_(0, labels, means)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    new = model.embeddings.clone()
    seen = counts > 0
    new[seen] = sums[seen] / counts[seen].reshape(-1, 1, 1)
    return new


def _hard_mask(model):
    tau = model.config.cream.tau
    return lambda features, labels: (minmax(model.cam(features, labels).flatten(1), (1,)) >= tau).float()


def _em_mask(model):
    """The calibrated responsibilities z~ `(B,N)` of the model's re-activation from its embeddings."""
    c = model.config.cream

    def mask(features, labels):
        b, _, h, w = features.shape
        out = reactivation(model.em_features(features), model.cam(features, labels), model.embeddings[labels],
                           c.iterations, c.beta, c.tau, c.feature_mean == "unit", c.border, c.calibration,
                           c.upsample, c.adapt_fg, c.adapt_bg, model.center)
        z = out.calibrated
        if z.shape[-1] != h * w:  # a finer EM grid: back to feature cells
            z = torch.nn.functional.adaptive_avg_pool2d(z.reshape(b, 1, h * c.upsample, w * c.upsample),
                                                        (h, w)).reshape(b, -1)
        return z
    return mask


def _set(model, new: torch.Tensor) -> float:
    """Replace the embeddings; returns the mean change of the rows (1 - cosine to the old ones)."""
    change = 1 - (l2_normalize(new, 2) * l2_normalize(model.embeddings, 2)).sum(2).mean()
    model.embeddings.copy_(new)
    return float(change)


def _refine_rounds(model, split: Iterable, rounds: int, log, history: list[dict]) -> None:
    for round_index in range(rounds):
        change = _set(model, _class_means(model, split, _em_mask(model)))
        history.append({"round": round_index + 1, "mean_change": change})
        log(f"refine round {round_index + 1}/{rounds}: mean change of the embeddings {change:.4f}")


@torch.no_grad()
def refine_embeddings(model, batches: Batches, rounds: int,
                      log: Callable[[str], None] = lambda line: None) -> list[dict]:
    """`rounds` refinement rounds of `model.embeddings` in place over `batches()` (images,
    labels: the training split, evaluation transform), from the embeddings it has; returns per
    round the mean change of the rows (1 - cosine to the previous round's)."""
    history: list[dict] = []
    _refine_rounds(model, _SplitFeatures(model, batches), rounds, log, history)
    return history


@torch.no_grad()
def embedding_pass(model, batches: Batches, center: bool, rounds: int,
                   log: Callable[[str], None] = lambda line: None) -> dict:
    """Set the feature center (with `center`, and `config.cream.center` with it), the class means
    under the CAM's hard mask and then `rounds` refinement rounds, over `batches()` (the training
    split, evaluation transform, model in eval mode). Returns the pass's record."""
    split = _SplitFeatures(model, batches)
    model.config.cream.center = center
    if center:
        total, cells = None, 0
        for features, _ in split:
            features = model.em_features(features)
            flat = features.transpose(0, 1).reshape(features.shape[1], -1).double()
            total = flat.sum(1) if total is None else total + flat.sum(1)
            cells += flat.shape[1]
        model.feature_center.copy_((total / max(cells, 1)).to(model.feature_center.dtype))
        log(f"embedding pass: feature center over {cells} cells, norm {float(model.feature_center.norm()):.3f}")
    change = _set(model, _class_means(model, split, _hard_mask(model)))
    log(f"embedding pass: class means under the CAM's mask, mean change {change:.4f}")
    history: list[dict] = []
    _refine_rounds(model, split, rounds, log, history)
    return {"center": center, "refine_rounds": rounds, "class_means_change": change, "refine": history}
