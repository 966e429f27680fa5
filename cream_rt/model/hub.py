"""Networks by name from the libraries users build them with: `timm/ARCH` and `torchvision/ARCH`
built by timm / torchvision themselves, with the preprocessing their weights were trained with
(timm's `pretrained_cfg`, torchvision's `Weights.transforms`); `module/CLASS` names a network
wrapped in memory, which only its owner can build again."""
from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch.nn as nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CreamError
from .backbones import Backbone, BackboneSpec, CreamDefaults

__all__ = ["HUBS", "MODULE", "WRAPPED_DEFAULTS", "WeightsPreprocessing", "split_name", "import_hub", "hub_network",
           "hub_preprocessing", "hub_spec", "triple"]

HUBS = ("timm", "torchvision")  # the libraries a wrapped network's name can rebuild it from
MODULE = "module"  # `module/CLASS`: a network wrapped in memory; its checkpoint loads with `network=`
# the CREAM settings of a wrapped network (the stock-stride ImageNet layout: T = 1 as the Lite family's,
# the CAM's own features: no stage names to place an earlier layer by)
WRAPPED_DEFAULTS = CreamDefaults(em_layer="cam", center=True, iterations=1)


def split_name(name: str) -> tuple[str, str]:
    """("timm" | "torchvision" | "module", architecture) of a wrapped backbone's name."""
    hub, _, arch = name.partition("/")
    if hub not in (*HUBS, MODULE) or not arch:
        raise CreamError(f"backbone {name!r}: expected a registered name or timm/ARCH, torchvision/ARCH, module/CLASS")
    return hub, arch


def import_hub(hub: str) -> ModuleType:
    """The `timm` module or `torchvision.models`, importable on this machine (`ensure_torchvision`);
    CreamError naming the extra to install where it is missing."""
    from .tvshim import ensure_torchvision

    try:
        ensure_torchvision()
        return importlib.import_module("timm" if hub == "timm" else "torchvision.models")
    except ImportError:
        raise CreamError(f"--from {hub}: {hub} is not installed; pip install 'cream-rt[timm]' (timm and "
                         f"torchvision)") from None


def hub_network(name: str, num_classes: int | None = None) -> nn.Module:
    """The network `timm/ARCH` or `torchvision/ARCH` built by its library, random weights (a
    classifier of `num_classes` outputs where given); CreamError for an unknown architecture."""
    hub, arch = split_name(name)
    if hub == MODULE:
        raise CreamError(f"backbone {name!r} was wrapped in memory: load its checkpoint with "
                         f"load_checkpoint(path, network={arch}(...)), the network built as it was")
    lib = import_hub(hub)
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if hub == "timm":
        base = lib.models.split_model_name_tag(arch)[0]
        if not lib.is_model(base):
            raise CreamError(f"--arch {arch}: not a timm model (timm.list_models() lists them)")
        return lib.create_model(arch, pretrained=False, **extra)
    if arch not in lib.list_models(module=lib):
        raise CreamError(f"--arch {arch}: not a torchvision classification model "
                         f"(torchvision.models.list_models(module=torchvision.models) lists them)")
    return lib.get_model(arch, weights=None, **extra)


@functools.cache
def hub_spec(name: str) -> BackboneSpec:
    """The backbone spec of a wrapped network's name: its library's default preprocessing for the
    architecture (timm's `pretrained_cfg`, torchvision's default weights' transforms) and
    WRAPPED_DEFAULTS; `build` refuses (a wrapped network is built by `CamModel` with its CamForm)."""
    hub, arch = split_name(name)
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    if hub != MODULE:
        size, mean, std = hub_preprocessing(name).as_tuple()

    def refuse(large_feature_map: bool = False, stock_strides: bool = True) -> Backbone:
        raise CreamError(f"backbone {name!r} is a wrapped network: build it with cream_rt.wrap or "
                         f"`cream import --from {hub if hub != MODULE else 'timm'}`")

    return BackboneSpec(name, refuse, f"{arch} built by {hub}" if hub != MODULE else f"{arch} wrapped in memory",
                        input_size=size, mean=mean, std=std, pretrained=False, defaults=WRAPPED_DEFAULTS)




@dataclass(frozen=True)
class WeightsPreprocessing:
    """What a network's weights expect: input size, normalisation and class names (None: the
    library does not say), and where that was read."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...] | None
    source: str

    def as_tuple(self) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
        """(input size, mean, std)."""
        return self.input_size, self.mean, self.std


def hub_preprocessing(name: str, weights: str | None = None) -> WeightsPreprocessing:
    """The preprocessing of `timm/ARCH[.TAG]` (its `pretrained_cfg`, the tag's or the default
    one) or `torchvision/ARCH` (the transforms of `weights`, an enum name such as
    "ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"; default the architecture's DEFAULT).
    Nothing is downloaded. The wsolevaluation protocol resizes the whole image to the input size
    (no crop), so the crop's size is the input size.

    Example:
        >>> hub_preprocessing("timm/tf_efficientnet_lite0").mean
        (0.5, 0.5, 0.5)
    """
    hub, arch = split_name(name)
    lib = import_hub(hub)
    if hub == "timm":
        if weights is not None:
            raise CreamError("--weights applies to torchvision; name a timm tag as --arch ARCH.TAG")
        cfg = lib.models.get_pretrained_cfg(arch)
        if cfg is None:
            raise CreamError(f"--arch {arch}: timm has no pretrained config for it; give --input-size, --mean, --std")
        return WeightsPreprocessing(int(cfg.input_size[-1]), triple(cfg.mean), triple(cfg.std), None,
                                    f"timm pretrained_cfg of {arch}")
    try:
        enum = lib.get_model_weights(arch)
        chosen = enum.DEFAULT if weights is None else (lib.get_weight(weights) if "." in weights else enum[weights])
    except (KeyError, ValueError, AttributeError):
        raise CreamError(f"--weights {weights}: not torchvision weights of {arch} (expected one of "
                         f"{', '.join(str(w) for w in lib.get_model_weights(arch))})") from None
    transform = chosen.transforms()
    return WeightsPreprocessing(int(transform.crop_size[0]), triple(transform.mean), triple(transform.std),
                                tuple(chosen.meta.get("categories") or ()) or None, f"torchvision {chosen}")


def triple(values: Sequence[float]) -> tuple[float, float, float]:
    """Three floats (an RGB mean or std)."""
    a, b, c = (float(v) for v in values)
    return a, b, c
