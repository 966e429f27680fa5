"""Import torchvision on CPU torch: its wheel is a CUDA build whose compiled ops cannot load
(on a CPU-only torch), so placeholder schemas for torchvision::nms / qnms are registered first.
Model definitions then import; ops.nms and torchvision.io decoding stay unavailable."""
from __future__ import annotations

import importlib
from types import ModuleType


def import_torchvision_models() -> ModuleType:
    """`torchvision.models`, importable on CPU torch."""
    import torch

    try:
        return importlib.import_module("torchvision.models")
    except (RuntimeError, ImportError):
        pass
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive on torch
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
        try:
            lib.define(schema)
        except RuntimeError:
            pass
    setattr(torch, "_cream_tv_lib", lib)  # noqa: B010 (keep the registration alive)
    import sys

    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
    return importlib.import_module("torchvision.models")
