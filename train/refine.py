"""Embedding refinement (issue 23): after training, the EM's own calibrated responsibilities
over the training split replace the CAM's hard mask as the soft masks of the embedding update.
Each round runs the model's re-activation (its config: T, beta, tau, calibration, start) on every
training image of class y from the current embeddings V[y], takes the image's responsibility-
weighted mean (L2-normalised under `feature_mean: unit`) feature on each side, and sets V[y] to
the class's mean of those over the split: the fixed point that the momentum rule of
docs/method.md 3.1 would approach with these masks. No gradient; the classifier is frozen."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cream_rt.model.em import l2_normalize, reactivation, side_means

__all__ = ["refine_embeddings"]

# features of the whole split stay in memory up to this size; beyond it each round recomputes them
CACHE_BYTES = 1 << 30


@torch.no_grad()
def refine_embeddings(model, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], rounds: int,
                      log: Callable[[str], None] = lambda line: None) -> list[dict]:
    """`rounds` refinement rounds of `model.embeddings` in place over `batches()` (images,
    labels: the training split, evaluation transform); returns per round the mean change of the
    rows (1 - cosine to the previous round's)."""
    c = model.config.cream
    unit = c.feature_mean == "unit"
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the split's features, once read, if they fit
    cacheable = True
    history = []
    for round_index in range(rounds):
        sums = torch.zeros_like(model.embeddings)
        counts = torch.zeros(model.embeddings.shape[0], dtype=model.embeddings.dtype,
                             device=model.embeddings.device)
        source = cache if cache is not None else ((model.features(x), y) for x, y in batches())
        filling: list | None = [] if cache is None and cacheable else None
        filled_bytes = 0
        for features, labels in source:
            if filling is not None:
                filled_bytes += features.numel() * features.element_size()
                if filled_bytes <= CACHE_BYTES:
                    filling.append((features, labels))
                else:
                    filling, cacheable = None, False
            b, k, h, w = features.shape
            cam = model.cam(features, labels)
            out = reactivation(features, cam, model.embeddings[labels], c.iterations, c.beta, c.tau, unit, c.border,
                               c.calibration, c.upsample, c.adapt_fg, c.adapt_bg)
            calibrated = out.calibrated
            if calibrated.shape[-1] != h * w:  # a finer EM grid: back to feature cells
                calibrated = torch.nn.functional.adaptive_avg_pool2d(
                    calibrated.reshape(b, 1, h * c.upsample, w * c.upsample), (h, w)).reshape(b, -1)
            means = side_means(features.reshape(b, k, h * w), calibrated, unit)
            sums.index_add_(0, labels, means)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
        if filling is not None:
            cache = filling
        seen = counts > 0
        new = model.embeddings.clone()
        new[seen] = sums[seen] / counts[seen].reshape(-1, 1, 1)
        change = 1 - (l2_normalize(new, 2) * l2_normalize(model.embeddings, 2)).sum(2)[seen].mean()
        model.embeddings.copy_(new)
        history.append({"round": round_index + 1, "mean_change": float(change)})
        log(f"refine round {round_index + 1}/{rounds}: mean change of the embeddings {float(change):.4f}")
    return history
