"""`cream train-regressor`: CREAM with a box regressor (docs/method.md 3.5). Pseudo boxes are
the largest-contour boxes of the CREAM maps of the training split (ground-truth class) at the
threshold that is best on the validation split (MaxBoxAcc's); a class-agnostic regressor,
started from the CAM model's backbone, learns them with a mean squared error. It overfits its
noisy targets within a few epochs, so the epoch with the best validation GT-known Loc is kept."""
from __future__ import annotations

import copy
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cream_rt.boxes import box_to_fractions, map_boxes
from cream_rt.errors import CreamError
from cream_rt.metadata import SplitMetadata
from cream_rt.model.checkpoint import load_checkpoint
from cream_rt.model.network import CamModel
from cream_rt.model.regressor import BoxRegressor, RegressorConfig, save_regressor
from cream_rt.progress import progress
from cream_rt.scoring import SplitScorer, split_batches

from .data import BoxImages
from .trainer import seed_everything, training_splits

__all__ = ["validation_threshold", "pseudo_boxes", "score_regressor", "train_regressor"]

_log = logging.getLogger(__name__)


@torch.no_grad()
def validation_threshold(model: CamModel, meta: SplitMetadata, images: Path, batch_size: int, device: str) -> float:
    """The map threshold of the best MaxBoxAcc (largest contour, IoU 0.5) on the split."""
    cfg = model.config
    scorer = SplitScorer(meta, cfg.input_size, 0.01, pas=cfg.pas)
    for chunk, x, labels in split_batches(meta, images, batch_size, cfg.input_size, cfg.mean, cfg.std, "threshold"):
        logits, maps, _ = model(torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device), "cream")
        scorer.add(chunk, logits.cpu().numpy(), maps.cpu().numpy())
    return float(scorer.result()["MaxBoxAcc_threshold"])


@torch.no_grad()
def pseudo_boxes(model: CamModel, meta: SplitMetadata, images: Path, threshold: float, batch_size: int,
                 device: str) -> np.ndarray:
    """`(N,4)` fractions: per image, the largest-contour box of its CREAM map (GT class) at `threshold`."""
    cfg = model.config
    out = []
    for _, x, labels in split_batches(meta, images, batch_size, cfg.input_size, cfg.mean, cfg.std, "pseudo boxes"):
        _, maps, _ = model(torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device), "cream")
        for m in maps.cpu().numpy():
            box = map_boxes(m, threshold, False, cfg.pas)[0]
            out.append(box_to_fractions(box, cfg.input_size, cfg.input_size))
    return np.asarray(out, np.float32)


@torch.no_grad()
def score_regressor(regressor: BoxRegressor, meta: SplitMetadata, images: Path, batch_size: int,
                    device: str, logits_model: CamModel | None = None) -> dict:
    """The regressor's boxes scored as boxes (GT-known, MaxBoxAccV2's box-only form; Top-1/5
    with the CAM model's classes when given)."""
    cfg = regressor.config
    scorer = SplitScorer(meta, cfg.input_size, 0.01)
    regressor.eval()
    for chunk, x, _ in split_batches(meta, images, batch_size, cfg.input_size, cfg.mean, cfg.std, "regressor"):
        xt = torch.from_numpy(x).to(device)
        boxes = regressor(xt).cpu().numpy()
        logits = logits_model.logits(logits_model.features(xt)).cpu().numpy() if logits_model is not None else None
        scorer.add_boxes(chunk, logits, boxes)
    return scorer.result()


def train_regressor(checkpoint: str, data: str | None, out: str, *, images: str | None = None,
                    metadata: str | None = None, epochs: int = 6, batch_size: int = 32, lr: float = 0.01,
                    threshold: float | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """Pseudo boxes from `checkpoint`'s CREAM maps, then the regressor; returns the record."""
    image_root, meta_root, train_meta, val_meta = training_splits(data, images, metadata)
    model, _ = load_checkpoint(checkpoint)
    model.to(device).eval()
    if train_meta.num_classes > model.config.num_classes:
        raise CreamError(f"{meta_root / 'train'}: class label {train_meta.num_classes - 1} is out of range for "
                         f"{checkpoint} with {model.config.num_classes} classes")
    if threshold is None:
        if val_meta is None:
            raise CreamError(f"{meta_root / 'val'}: no validation split to choose the threshold on; pass --threshold")
        threshold = validation_threshold(model, val_meta, image_root, batch_size, device)
    _log.info(f"pseudo boxes at map threshold {threshold:.2f}")
    boxes = pseudo_boxes(model, train_meta, image_root, threshold, batch_size, device)
    cfg = model.config
    seed_everything(seed)
    regressor = BoxRegressor(RegressorConfig(cfg.backbone, cfg.input_size, cfg.mean, cfg.std,
                                             cfg.large_feature_map, threshold=threshold))
    regressor.backbone.load_state_dict(model.backbone.state_dict())  # start from the CAM model's features
    regressor.to(device)
    optimizer = torch.optim.SGD([{"params": regressor.backbone.parameters(), "lr": lr},
                                 {"params": regressor.head.parameters(), "lr": lr * 10}],
                                lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    data_set = BoxImages(train_meta.image_ids, boxes, image_root, cfg.input_size, cfg.mean, cfg.std, True, seed)
    history, started = [], time.time()
    best: tuple[float, dict | None, int] = (-1.0, None, 0)  # (val GT-known, weights, epoch): it overfits
    for epoch in range(epochs):
        data_set.epoch = epoch
        loader = torch.utils.data.DataLoader(data_set, batch_size=batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        regressor.train()
        total, loss_sum = 0, 0.0
        for x, y in progress(loader, f"regressor {epoch + 1}/{epochs}", unit="batch"):
            loss = torch.nn.functional.mse_loss(regressor(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += len(y)
            loss_sum += float(loss.detach()) * len(y)
        record = {"epoch": epoch + 1, "mse": loss_sum / max(total, 1), "seconds": round(time.time() - started, 1)}
        if val_meta is not None:
            metrics = score_regressor(regressor, val_meta, image_root, batch_size, device)
            record.update(val_GT_known_Loc=metrics["GT_known_Loc"], val_MaxBoxAccV2=metrics["MaxBoxAccV2"])
            if metrics["GT_known_Loc"] > best[0]:
                best = (metrics["GT_known_Loc"], copy.deepcopy(regressor.state_dict()), epoch + 1)
        history.append(record)
        _log.info(str(record))
    if best[1] is not None:  # keep the epoch that localizes the validation split best
        regressor.load_state_dict(best[1])
    training = {"from": os.fspath(checkpoint), "threshold": threshold, "epochs": epochs, "lr": lr, "seed": seed,
                "kept_epoch": best[2] if best[1] is not None else epochs,
                "history": history, "torch": str(torch.__version__), "python": platform.python_version(),
                "command": " ".join(sys.argv)}
    save_regressor(out, regressor.eval().cpu(), training)
    return {"regressor": os.fspath(out), "threshold": threshold, "kept_epoch": training["kept_epoch"],
            "history": history}
