"""`cream train`: the wsolevaluation recipe (SGD, momentum 0.9, Nesterov, 10x learning rate on
new layers, step decay) with CREAM's context-embedding learning on every training batch."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from cream_rt.config import REFINE_ROUNDS
from cream_rt.errors import CreamError
from cream_rt.metadata import SplitMetadata, data_paths, read_split
from cream_rt.model.backbones import get_backbone
from cream_rt.model.checkpoint import load_checkpoint, save_checkpoint, training_progress
from cream_rt.model.em import score_maps
from cream_rt.model.network import CamModel, create_model
from cream_rt.progress import progress
from cream_rt.scoring import SplitScorer, split_batches
from cream_rt.unreadable import MAX_BAD_IMAGES, UnreadableImages

from . import distributed
from .data import ReadableBatches, WsolImages, split_loader
from .refine import embedding_pass, warn_fallback

__all__ = ["training_splits", "TrainConfig", "class_names_for", "check_images_exist", "seed_everything", "param_groups",
           "evaluate_split", "train", "train_epoch", "TrainStep", "recalibrate_batchnorm", "split_batches_of"]

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings; defaults suit small-cnn on the synthetic benchmark on 2 CPU cores."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 0.01  # pretrained layers; new layers get 10x
    lr_decay_epochs: tuple[int, ...] = (4,)
    # Batches used to re-estimate BatchNorm statistics with the epoch's final weights before
    # validation and saving (0: keep the running averages, which lag behind fast training).
    bn_batches: int = 40
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    pretrained: str | None = None
    # After the last epoch, the embedding pass over the training split with the final weights in
    # eval mode (train/refine.py): the feature center (where the model's CreamConfig.center),
    # the class means under the CAM's mask, then `refine_rounds` rounds with the EM's soft masks.
    # Off: the embeddings are the momentum averages of the last training samples (the paper's rule).
    embedding_pass: bool = True
    refine_rounds: int = REFINE_ROUNDS
    # Unreadable training images are skipped and reported; more than this many stop the run.
    max_bad_images: int = MAX_BAD_IMAGES


def class_names_for(meta_root: Path, num_classes: int) -> list[str]:
    """Class names from the data root's class_names.txt, else the label numbers."""
    names_file = meta_root.parent / "class_names.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) == num_classes:
            return names
    return [str(c) for c in range(num_classes)]


def training_splits(data: str | None, images: str | None,
                    metadata: str | None) -> tuple[Path, Path, SplitMetadata, SplitMetadata | None]:
    """(image root, metadata root, train split, val split or None), every listed image checked
    to exist before any work."""
    image_root, meta_root = data_paths(data, images, metadata)
    train_meta = read_split(meta_root / "train", require_localization=False)
    val_meta = read_split(meta_root / "val") if (meta_root / "val").is_dir() else None
    for split in (train_meta, val_meta):
        if split is not None:
            check_images_exist(split, image_root)
    return image_root, meta_root, train_meta, val_meta


def check_images_exist(meta: SplitMetadata, image_root: Path) -> None:
    """Before training: every image of the split is a file (a stat each; decoding errors are
    found when the image is read)."""
    missing = [i for i in meta.image_ids if not (image_root / i).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(meta.image_ids)})" if len(missing) > 1 else ""
        raise CreamError(f"{image_root / missing[0]}: image file not found{more}")


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def param_groups(model: CamModel, lr: float) -> list[dict]:
    """New layers (classifier, and the backbone's new parts) at 10x the learning rate."""
    new_prefixes = tuple(f"backbone.{p}" if p else "backbone." for p in model.backbone.new_layers) + ("classifier.",)
    new: list[torch.nn.Parameter] = []
    old: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (new if name.startswith(new_prefixes) else old).append(param)
    groups = [{"params": new, "lr": lr * 10, "base_lr": lr * 10}]
    if old:
        groups.append({"params": old, "lr": lr, "base_lr": lr})
    return groups


def evaluate_split(model: CamModel, meta: SplitMetadata, images: Path, variants: dict[str, tuple[str, int | None]],
                   batch_size: int, interval: float = 0.01, device: str = "cpu",
                   unreadable: UnreadableImages | None = None) -> dict:
    """Metrics of each variant `name -> (mode, iterations)` on a split, scored as the batches
    come, from one backbone pass per batch shared by all variants. With `unreadable`, an image
    that cannot be decoded is recorded there and counts as a miss."""
    cfg = model.config
    scorers = {name: SplitScorer(meta, cfg.input_size, interval, pas=cfg.pas) for name in variants}
    model.eval()
    with torch.no_grad():
        for ids, x_np, y_np in split_batches(meta, images, batch_size, cfg.input_size, cfg.mean, cfg.std, "val",
                                             unreadable, scorers.values()):
            x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
            features = model.features(x)
            logits = model.logits(features).cpu().numpy()
            for name, (mode, iterations) in variants.items():
                maps = score_maps(model.maps_from_features(features, y, mode, iterations), x.shape[-2:])
                scorers[name].add(ids, logits, maps.cpu().numpy())
    return {name: scorer.result() for name, scorer in scorers.items()}


def train(backbone: str, data: str | None, out: str, *, config: TrainConfig | None = None, images: str | None = None,
          metadata: str | None = None, resume: str | None = None, **model_fields) -> dict:
    """Train a CAM model with context-embedding learning into the checkpoint `out`; returns the
    training record. `model_fields`: other `ModelConfig` fields of a new model (cream, input_size,
    large_feature_map, tap, nwc, pas), as `create_model` takes them; a resumed model has its own.

    Example:
        >>> train("resnet50", "data/cub", "runs/cub.pt", config=TrainConfig(epochs=50), tap=True)  # doctest: +SKIP
    """
    config = config or TrainConfig()
    image_root, meta_root, train_meta, val_meta = training_splits(data, images, metadata)
    ctx = distributed.from_environment(config.device)  # torchrun: join the job; otherwise one process
    if ctx.enabled:
        config = dataclasses.replace(config, device=ctx.device)
    try:
        record = _train(backbone, config, model_fields, image_root, meta_root, train_meta, val_meta, out, resume, ctx)
    except (torch.distributed.DistError, RuntimeError) as exc:
        if not ctx.enabled:
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise CreamError(f"rank {ctx.rank} of {ctx.world_size}: the job lost a process ({first}); resume from the "
                         "last checkpoint with --resume") from None
    # after a failure the group stays up: the CLI prints the rank's line, then waits there for the other ranks
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return record


def _train(backbone: str, config: TrainConfig, model_fields: dict, image_root: Path, meta_root: Path,
           train_meta: SplitMetadata, val_meta: SplitMetadata | None, out: str, resume: str | None,
           ctx: distributed.Distributed) -> dict:
    seed_everything(config.seed)
    get_backbone(backbone)  # an unknown name fails before any work
    model, start_epoch, history, payload = _initial_model(backbone, meta_root, train_meta, config, model_fields,
                                                          resume, ctx.is_main)
    model.to(config.device)
    optimizer = torch.optim.SGD(param_groups(model, config.lr), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    if resume and "optimizer" in payload:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CreamError(f"{resume}: its optimizer state does not fit the model ({exc})") from None
    cfg = model.config
    data_set = WsolImages(train_meta, image_root, cfg.input_size, cfg.mean, cfg.std, train=True, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    step: torch.nn.Module = TrainStep(model)
    unreadable = UnreadableImages(config.max_bad_images)
    if ctx.enabled:  # gradients averaged over ranks; buffers (BN, embeddings) synced at the start, then kept
        # identical by our own rules (gathered embedding updates, BN statistics averaged per epoch)
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[ctx.local_rank] if ctx.device.startswith("cuda") else None,
            forward_sync_buffers=False)
        if len(data_set) < config.batch_size * ctx.world_size:
            raise CreamError(f"{meta_root / 'train'}: {len(data_set)} images are fewer than one global batch "
                             f"({config.batch_size} x {ctx.world_size} processes)")
    started = time.time()
    for epoch in range(start_epoch, config.epochs):
        decay = 0.1 ** sum(epoch >= e for e in config.lr_decay_epochs)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay
        data_set.epoch = epoch
        loader = ReadableBatches(_epoch_loader(data_set, config, epoch, generator, ctx), unreadable,
                                 keep_empty=ctx.enabled)
        total, correct, loss_sum = train_epoch(model, loader, optimizer, loss_fn, config.device,
                                               f"epoch {epoch + 1}/{config.epochs}", step, ctx)
        recalibrate_batchnorm(model, loader, config.bn_batches, config.device)
        distributed.average_batchnorm(model, ctx)
        distributed.share_unreadable(unreadable, ctx)
        job_total, job_correct, job_loss = distributed.sum_over_ranks([total, correct, loss_sum], ctx)
        record: dict[str, object] = {"epoch": epoch + 1, "loss": job_loss / max(job_total, 1),
                                     "train_acc": 100.0 * job_correct / max(job_total, 1),
                                     "seconds": round(time.time() - started, 1), "unreadable_images": len(unreadable)}
        if ctx.enabled:
            record.update({"processes": ctx.world_size, "backend": ctx.backend,
                           "embeddings_max_diff_across_ranks": distributed.embeddings_spread(model, ctx)})
        if not ctx.is_main:  # validation, the embedding pass and the checkpoint are rank 0's
            continue
        if epoch == config.epochs - 1 and config.embedding_pass:
            model.eval()
            record["embedding_pass"] = embedding_pass(
                model,
                split_batches_of(model, train_meta, image_root, config.batch_size, config.device, "embedding pass",
                                 unreadable),
                bool(model.config.cream.center), config.refine_rounds)
        elif epoch == config.epochs - 1:  # the momentum embeddings: the fallback for classes never seen
            model.fill_unfitted()
            record["embeddings"] = warn_fallback(model, "train")
        if val_meta is not None:
            metrics = evaluate_split(model, val_meta, image_root, {"cam": ("cam", 0), "cream": ("cream", None)},
                                     config.batch_size, device=config.device, unreadable=unreadable)
            record.update({"val_acc": metrics["cam"]["classification_top1"],
                           "val_MaxBoxAccV2_cam": metrics["cam"]["MaxBoxAccV2"],
                           "val_MaxBoxAccV2_cream": metrics["cream"]["MaxBoxAccV2"]})
        history.append(record)
        _log.info(json.dumps(record))
        training = {"epoch": epoch + 1, "history": history, "train_config": dataclasses.asdict(config),
                    "data": str(meta_root), "torch": str(torch.__version__), "python": platform.python_version(),
                    "machine": platform.machine(), "command": " ".join(sys.argv),
                    "unreadable_images": unreadable.record()}
        if ctx.enabled:
            training["distributed"] = {"processes": ctx.world_size, "backend": ctx.backend,
                                       "batch_size_per_process": config.batch_size}
        save_checkpoint(out, model, training, optimizer.state_dict())
    if ctx.enabled:
        torch.distributed.barrier()  # every rank ends after rank 0 has written the last checkpoint
    if ctx.is_main:
        unreadable.warn("train")
    return {"history": history, "checkpoint": os.fspath(out), "unreadable_images": unreadable.record()}


class TrainStep(torch.nn.Module):
    """(features, logits) of a batch: the forward pass DistributedDataParallel wraps, so that
    its gradient hooks see the backbone and the classifier."""

    def __init__(self, model: CamModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return features, self.model.logits(features)


def _epoch_loader(data_set, config: TrainConfig, epoch: int, generator: torch.Generator,
                  ctx: distributed.Distributed):
    """The epoch's shuffled batches: one process shuffles with its seeded generator; under
    torchrun a DistributedSampler gives each rank every world_size-th image of one permutation."""
    if not ctx.enabled:
        generator.manual_seed(config.seed * 1000 + epoch)
        return split_loader(data_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                            num_workers=config.workers, drop_last=True)
    sampler: torch.utils.data.DistributedSampler = torch.utils.data.DistributedSampler(
        data_set, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    return split_loader(data_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=True)


def _initial_model(backbone: str, meta_root: Path, train_meta: SplitMetadata, config: TrainConfig,
                   model_fields: dict, resume: str | None, announce: bool) -> tuple[CamModel, int, list, dict]:
    """(model, epochs done, history, checkpoint payload): resumed from `resume`, or new with
    the backbone's ImageNet weights (small-cnn: random)."""
    if resume:
        model, payload = load_checkpoint(resume)
        model.train()
        start_epoch, history = training_progress(payload, resume)
        if start_epoch >= config.epochs:
            raise CreamError(f"{resume}: already trained {start_epoch} epochs; pass --epochs above {start_epoch} "
                             "to continue")
        if train_meta.num_classes > model.config.num_classes:
            raise CreamError(f"{meta_root / 'train'}: class label {train_meta.num_classes - 1} is out of range "
                             f"for {resume} with {model.config.num_classes} classes")
        return model, start_epoch, history, payload
    num_classes = train_meta.num_classes
    fields = {k: v for k, v in model_fields.items() if v is not None}  # None: the backbone's default
    model = create_model(backbone, num_classes, pretrained=config.pretrained or get_backbone(backbone).pretrained,
                         class_names=class_names_for(meta_root, num_classes), **fields)
    report = model.pretrained_report
    if announce and report and report["loaded"]:
        _log.info(f"pretrained {backbone}: {report['loaded']} tensors loaded from {report['source']}; "
                  f"random: {', '.join(report['random'][:6]) or 'none'}{' ...' if len(report['random']) > 6 else ''}")
    return model, 0, [], {}


def train_epoch(model: CamModel, loader, optimizer, loss_fn, device: str, desc: str,
                step: torch.nn.Module | None = None,
                ctx: distributed.Distributed | None = None) -> tuple[int, int, float]:
    """One pass over `loader`: SGD step and context-embedding update per batch; returns
    (images seen, correctly classified, summed loss) of this process. Under torchrun `step` is
    the DistributedDataParallel forward and the embedding update is gathered over ranks."""
    ctx = ctx or distributed.Distributed(device=device)
    step = step or TrainStep(model)
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in progress(loader, desc, unit="batch", enabled=None if ctx.is_main else False):
        if distributed.any_rank_empty(len(y), ctx):  # a batch of unreadable images: every rank skips the step
            continue
        x, y = x.to(device), y.to(device)
        features, logits = step(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        distributed.update_embeddings(model, features, y, ctx)
        total += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * len(y)
    return total, correct, loss_sum


def recalibrate_batchnorm(model: CamModel, loader, batches: int, device: str) -> None:
    """Replace BatchNorm running statistics by their plain average over `batches` training
    batches under the current weights ("precise BN"): the exponential running averages trail
    weights that moved fast during the epoch, and eval-mode features (used for maps and
    validation) would otherwise differ from the training-time ones."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in islice((x for x, _ in loader if len(x)), batches):
            model.features(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def split_batches_of(model: CamModel, meta: SplitMetadata, image_root: Path, batch_size: int, device: str, desc: str,
                   unreadable: UnreadableImages) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """A callable yielding (images, labels) of the split in order, evaluation transform (no
    augmentation), with a progress bar: the input of the embedding pass and refinement.
    Unreadable images go to `unreadable`."""
    cfg = model.config
    data_set = WsolImages(meta, image_root, cfg.input_size, cfg.mean, cfg.std, train=False)

    def batches():
        loader = split_loader(data_set, batch_size=batch_size, shuffle=False)
        for x, y in progress(ReadableBatches(loader, unreadable), desc, unit="batch"):
            yield x.to(device), y.to(device)
    return batches
