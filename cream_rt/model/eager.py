"""The eager PyTorch model behind the same numpy interface as the ONNX runtime."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..manifest import Manifest
from .checkpoint import load_checkpoint
from .network import CamModel

__all__ = ["EagerPredictor"]


class EagerPredictor:
    """`predictor(x, class_ids) -> (logits, maps)` on numpy arrays, torch underneath."""

    def __init__(self, model: CamModel, mode: str = "cream", iterations: int | None = None,
                 device: str = "cpu", fused: bool = False, regressor=None):
        self.model = model.eval().to(device)
        self.regressor = None if regressor is None else regressor.eval().to(device)
        self.mode, self.fused = mode, fused
        self.iterations = model.config.cream.iterations if iterations is None else iterations
        self.device = device
        cfg = model.config
        self.input_size, self.mean, self.std = cfg.input_size, cfg.mean, cfg.std

    @classmethod
    def from_checkpoint(cls, path: str, mode: str = "cream", iterations: int | None = None,
                        device: str = "cpu", regressor: str | None = None) -> "EagerPredictor":
        """The checkpoint's model, with the box regressor file `regressor` if given."""
        box_model = None
        if regressor:
            from .regressor import load_regressor

            box_model = load_regressor(regressor)
        return cls(load_checkpoint(path)[0], mode, iterations, device, regressor=box_model)

    def __call__(self, x: np.ndarray, class_ids: np.ndarray | None = None):
        """(logits `(B,C)`, maps `(B,S,S)`) of a normalised batch, as numpy arrays."""
        return self.run(x, class_ids)[:2]

    @torch.no_grad()
    def run(self, x: np.ndarray, class_ids: np.ndarray | None = None) -> tuple:
        """(logits, maps, boxes): boxes `(B,4)` fractions from the box regressor, or None."""
        images = torch.from_numpy(x).to(self.device)
        ids = None if class_ids is None else torch.from_numpy(np.asarray(class_ids, np.int64)).to(self.device)
        logits, maps, _ = self.model(images, ids, self.mode, self.iterations, self.fused)
        boxes = None if self.regressor is None else self.regressor(images).cpu().numpy()
        return logits.cpu().numpy(), maps.cpu().numpy(), boxes

    @functools.cached_property
    def manifest(self) -> Manifest:
        """The manifest an export of this model in this mode would carry (what `Localizer` reads)."""
        from ..export.onnx_export import build_manifest

        return build_manifest(self.model, self.mode, self.iterations if self.mode == "cream" else 0, None)

    @property
    def path(self) -> str:
        """What names this model in messages."""
        return f"eager {self.model.config.backbone}"

    def describe(self) -> dict:
        return {"engine": "eager", "mode": self.mode, "iterations": self.iterations,
                "backbone": self.model.config.backbone}
