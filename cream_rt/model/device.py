"""The torch device named on the command line, checked before any work starts."""
from __future__ import annotations

import torch

from ..errors import CreamError

__all__ = ["torch_device"]


def torch_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`, present on this machine; CreamError naming what exists otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CreamError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CreamError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise CreamError(f"--device {name}: CUDA is not available (torch {torch.__version__}, "
                         f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CreamError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device
