"""CREAM's second variant (docs/method.md 3.5): a class-agnostic box regressor trained on
pseudo boxes from the CREAM maps. The regressor is a backbone of the CAM model's kind with a
small MLP head (features pooled to a 4x4 grid, 256 hidden units, 4 sigmoid outputs): the box
as fractions of the image, `[x0, y0, x1, y1]` with x1, y1 exclusive. Its file loads with `weights_only=True`."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import atomic_path
from ..errors import ModelFileError
from .backbones import get_backbone
from .torchfile import load_torch_file

__all__ = ["RegressorConfig", "BoxRegressor", "save_regressor", "load_regressor"]

FORMAT = "cream_rt.regressor"
VERSION = 1


@dataclass
class RegressorConfig:
    """What rebuilds the regressor and feeds it (the same preprocessing as its CAM model)."""

    backbone: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    large_feature_map: bool = False
    hidden: int = 256
    grid: int = 4  # the features are pooled to grid x grid cells, so the head still sees where things are
    threshold: float = 0.2  # the map threshold its pseudo boxes were taken at (validation-optimal)


class BoxRegressor(nn.Module):
    """images `(B,3,S,S)` -> boxes `(B,4)` in [0, 1]: `[x0, y0, x1, y1]` fractions of the image."""

    def __init__(self, config: RegressorConfig):
        super().__init__()
        self.config = config
        self.backbone = get_backbone(config.backbone).build(config.large_feature_map, False)
        k = self.backbone.out_channels
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.head = nn.Sequential(nn.Linear(k * config.grid * config.grid, config.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(config.hidden, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.pool(self.backbone(images)).flatten(1)))


def save_regressor(path: str | os.PathLike, model: BoxRegressor, training: dict | None = None) -> None:
    """Write the regressor atomically."""
    config = asdict(model.config)
    config["mean"], config["std"] = list(config["mean"]), list(config["std"])
    payload = {"format": FORMAT, "version": VERSION, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "training": training or {}}
    with atomic_path(path, "--out") as tmp:
        torch.save(payload, tmp)


def load_regressor(path: str | os.PathLike) -> BoxRegressor:
    """The regressor in eval mode; ModelFileError with one line for anything else."""
    path = Path(path)
    payload = load_torch_file(path, "regressor file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a cream box regressor (expected format {FORMAT!r}; "
                             "`cream train-regressor` writes one)")
    if payload.get("version") != VERSION:
        raise ModelFileError(f"{path}: regressor version {payload.get('version')!r} is not supported "
                             f"(expected {VERSION})")
    try:
        fields = dict(payload["config"])
        fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
        model = BoxRegressor(RegressorConfig(**fields))
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise ModelFileError(f"{path}: regressor does not match its config ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return model.eval()
