"""cream_rt: CAM / CREAM weakly supervised object localization, from training to a fast
ONNX runtime, with the wsolevaluation protocol. Importing it never imports torch."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Localizer", "CREAM", "wrap", "ensure_torchvision"]


def __getattr__(name: str):
    if name == "Localizer":  # lazy: `import cream_rt` stays light (no onnxruntime import)
        from .runtime import Localizer

        return Localizer
    if name in ("CREAM", "wrap", "ensure_torchvision"):  # lazy: these import torch
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'cream_rt' has no attribute {name!r}")
