"""torchvision (and timm, which imports it) where its compiled ops cannot load: the only
torchvision for the pinned CPU torch is a CUDA build, and `import torchvision` then fails with
"operator torchvision::nms does not exist". `ensure_torchvision` registers placeholder schemas
for torchvision::nms / qnms first, only where that failure happens; model definitions and
transforms then import, `ops.nms` and `torchvision.io` decoding stay unavailable. A torchvision
whose ops load is never touched."""
from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

__all__ = ["ensure_torchvision", "shim_applied", "import_torchvision_models"]

_log = logging.getLogger(__name__)
_PLACEHOLDERS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                 "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_OPS_FAILURE = "torchvision::"  # what the failing import's message names


def shim_applied() -> bool:
    """Whether this process registered the placeholders (`ensure_torchvision`)."""
    import torch

    return hasattr(torch, "_cream_tv_lib")


def ensure_torchvision() -> bool:
    """Make `import torchvision` (and `import timm`) work in this process; call it before
    importing either where torchvision's compiled ops do not match torch. Returns True where the
    placeholders were needed (now or earlier), False where torchvision imported as it is.
    ImportError where torchvision is not installed.

    Example:
        >>> from cream_rt.model import ensure_torchvision
        >>> ensure_torchvision()  # doctest: +SKIP
        >>> import timm  # doctest: +SKIP
    """
    import torch

    if shim_applied():
        return True
    try:
        importlib.import_module("torchvision")
        return False
    except RuntimeError as exc:
        if _OPS_FAILURE not in str(exc):
            raise
        _log.debug(f"torchvision's compiled ops do not load ({exc}); registering placeholders for nms / qnms")
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _PLACEHOLDERS:
        try:
            lib.define(schema)
        except RuntimeError:  # already defined (by a torchvision that half-loaded)
            pass
    setattr(torch, "_cream_tv_lib", lib)  # noqa: B010 (keeps the registration alive)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import's half-initialised modules
    importlib.import_module("torchvision")
    return True


def import_torchvision_models() -> ModuleType:
    """`torchvision.models`, importable on this machine (`ensure_torchvision`)."""
    ensure_torchvision()
    return importlib.import_module("torchvision.models")
