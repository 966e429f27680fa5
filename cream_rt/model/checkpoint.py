"""Checkpoints: one file with weights, embeddings, config and training metadata, written
atomically and loaded with `torch.load(weights_only=True)` (no arbitrary unpickling)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..config import CONFIG_VERSION, ModelConfig
from ..errors import ModelFileError
from .network import CamModel
from .torchfile import load_torch_file

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "read_checkpoint", "training_progress", "load_checkpoint",
           "file_sha256"]

FORMAT = "cream_rt.checkpoint"
VERSION = CONFIG_VERSION  # the payload's version is its config's (config.migrate_config)


def save_checkpoint(path: str | os.PathLike, model: CamModel, training: dict | None = None,
                    optimizer_state: dict | None = None) -> None:
    """Write the checkpoint atomically (temporary file + rename)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": training or {},
    }
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; ModelFileError with one clear line otherwise."""
    path = Path(path)
    payload = load_torch_file(path, "cream checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:  # e.g. a bare state dict
        raise ModelFileError(f"{path}: not a cream checkpoint (expected format {FORMAT!r})")
    if payload.get("version") not in (1, VERSION):
        raise ModelFileError(f"{path}: checkpoint version {payload.get('version')!r} is not supported "
                             f"(expected 1 to {VERSION})")
    payload.setdefault("training", {})  # optional: imported models have no training record
    for key, kind in (("config", dict), ("state_dict", dict), ("training", dict)):
        if not isinstance(payload.get(key), kind):
            found = "missing" if key not in payload else f"a {type(payload[key]).__name__}"
            raise ModelFileError(f"{path}: checkpoint field {key!r} must be a {kind.__name__}, found {found}")
    return payload


def training_progress(payload: dict, path: str | os.PathLike) -> tuple[int, list]:
    """(epochs done, history) from a checkpoint's training record, checked for `--resume`."""
    training = payload["training"]
    epoch, history = training.get("epoch"), training.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ModelFileError(f"{path}: cannot resume: the training record has no epoch count "
                             f"(found {epoch!r}); was it written by `cream train`?")
    if not isinstance(history, list):
        raise ModelFileError(f"{path}: cannot resume: the training record's history must be a list, "
                             f"found {type(history).__name__}")
    return epoch, history


def load_checkpoint(path: str | os.PathLike, network: torch.nn.Module | None = None) -> tuple[CamModel, dict]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, the raw payload).
    `network`: for a network wrapped in memory (backbone `module/CLASS`), the network built as
    it was (its weights are then the checkpoint's).

    Example:
        >>> model, payload = load_checkpoint("runs/model.pt")  # doctest: +SKIP
    """
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"], payload["version"])
        model = CamModel(config, network)
        state = payload["state_dict"]
        if payload["version"] == 1:  # buffers added later: no center, every class's pair taken as fitted
            fitted = torch.ones_like(model.embedding_fitted)
            state = {"feature_center": model.feature_center, "embedding_fitted": fitted, **state}
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: checkpoint does not match its model config "
                             f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})") from None
    return model.eval(), payload


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
