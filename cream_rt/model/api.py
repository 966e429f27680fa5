"""Your classifier, as it is, with CAM and CREAM: `wrap` turns a network in memory (any CNN whose
head is global pooling then a linear layer or a 1x1 convolution) into a CamModel that shares its
parameters; `CREAM` is the torch-cam-style entry around it (maps, boxes, fitting, tuning, saving,
export). `cream import --from timm|torchvision` builds the network and calls `wrap` too."""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..config import CAM_LAYER, IMAGENET_MEAN, IMAGENET_STD, REFINE_ROUNDS, CreamConfig, ModelConfig
from ..errors import CreamError
from .cam_form import find_cam_form
from .hub import HUBS, MODULE, WeightsPreprocessing, hub_network, hub_preprocessing, split_name, triple
from .network import CamModel

__all__ = ["wrap", "network_name", "CREAM", "CamOutput"]

_log = logging.getLogger(__name__)
IMAGENET_CLASSES = 1000


def network_name(network: nn.Module) -> str:
    """The name a checkpoint rebuilds `network` by: `timm/ARCH` for a timm model that timm builds
    again with the same parameters, else `module/CLASS` (a torchvision network's architecture is
    not recorded on it: pass `name="torchvision/ARCH"` to `wrap`)."""
    cfg = getattr(network, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if isinstance(cfg, dict) and arch and type(network).__module__.startswith("timm."):
        name = f"timm/{arch}"  # the tag names weights, not another architecture (their preprocessing is kept)
        if _rebuild_problem(network, name) is None:
            return name
    return f"{MODULE}/{type(network).__name__}"


def _num_classes(network: nn.Module) -> int | None:
    """The classifier size timm / torchvision take as `num_classes` (their last Linear's outputs)."""
    last = [m for m in network.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return int(last[-1].weight.shape[0]) if last else None


def _rebuild_problem(network: nn.Module, name: str) -> str | None:
    """None where the library builds `name` with `network`'s parameter names and shapes, else the
    first difference."""
    try:
        ours = hub_network(name, _num_classes(network)).state_dict()
    except CreamError as exc:
        return str(exc)
    theirs = network.state_dict()
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs or ours[key].shape != theirs[key].shape:
            return f"parameter {key!r} differs"
    return None


def _preprocessing(network: nn.Module, name: str, given: WeightsPreprocessing | None) -> WeightsPreprocessing:
    """The given preprocessing, else the weights': a timm network's own `pretrained_cfg`, a
    torchvision architecture's default weights; else ImageNet's at 224 px, logged."""
    if given is not None:
        return given
    cfg = getattr(network, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("input_size"):
        return WeightsPreprocessing(int(cfg["input_size"][-1]), triple(cfg["mean"]), triple(cfg["std"]), None,
                                    f"the network's pretrained_cfg ({cfg.get('architecture')})")
    hub, _ = split_name(name)
    if hub in HUBS:
        return hub_preprocessing(name)
    _log.warning(f"{type(network).__name__}: no preprocessing given; assuming ImageNet's mean and std at 224 px "
                 f"(pass preprocessing=WeightsPreprocessing(...) with what its weights were trained with)")
    return WeightsPreprocessing(224, IMAGENET_MEAN, IMAGENET_STD, None, "assumed: ImageNet mean/std, 224 px")


def wrap(network: nn.Module, cam_layer: str | None = None, *, em_layer: str | None = None,
         preprocessing: WeightsPreprocessing | None = None, class_names: Sequence[str] | None = None,
         cream: CreamConfig | None = None, name: str | None = None, check_name: bool = True) -> CamModel:
    """A CAM model around `network` (its parameters shared, not copied), in eval mode.

    Args:
        network: a classifier whose head is global average pooling then an nn.Linear or a 1x1
            nn.Conv2d (one LayerNorm between them allowed: ConvNeXt); the CAM form is found and
            checked on its own forward (`cam_form.find_cam_form`).
        cam_layer: the module whose output the head pools (found when None).
        em_layer: the module whose output CREAM's EM clusters (default: the CAM layer's), at the
            CAM's grid or one stride-2 step finer.
        preprocessing: input size, mean, std (and class names) its weights expect; default: a timm
            network's `pretrained_cfg`, a torchvision architecture's default weights, else ImageNet's.
        class_names: one per class (default: the preprocessing's, or ImageNet's for 1000 classes).
        cream: CREAM settings (default: CreamConfig(); T = 1, centered features).
        name: how its checkpoint rebuilds it: `timm/ARCH`, `torchvision/ARCH` (checked against the
            library's build) or `module/CLASS` (`load_checkpoint(path, network=...)`); default
            `network_name(network)`.
        check_name: build `name` with its library and compare (off where the network was built so).
    Returns:
        The CamModel; no class has CREAM embeddings until `CREAM.fit` (its CREAM maps are CAM's).

    Example:
        >>> model = wrap(torchvision.models.resnet18(), name="torchvision/resnet18")  # doctest: +SKIP
        >>> logits, maps, classes = model(torch.rand(2, 3, 224, 224))  # doctest: +SKIP
    """
    if not isinstance(network, nn.Module):
        raise CreamError(f"network: expected a torch.nn.Module, got {type(network).__name__}")
    if name is None:
        name = network_name(network)
    elif split_name(name)[0] in HUBS and check_name:
        problem = _rebuild_problem(network, name)
        if problem is not None:
            raise CreamError(f"name {name!r}: {type(network).__name__} is not what {split_name(name)[0]} builds "
                             f"as {split_name(name)[1]} ({problem}); use name='{MODULE}/{type(network).__name__}'")
    pre = _preprocessing(network, name, preprocessing)
    form = find_cam_form(network, input_size=pre.input_size, cam_layer=cam_layer)
    classes = int(dict(network.named_modules())[form.classifier].weight.shape[0])
    names = list(class_names or [])
    if not names and pre.class_names and len(pre.class_names) == classes:  # the weights' own names
        names = list(pre.class_names)
    if not names and classes == IMAGENET_CLASSES:
        from .importers import imagenet_class_names

        names = imagenet_class_names()
    if names and len(names) != classes:
        raise CreamError(f"{len(names)} class names for a classifier of {classes} classes")
    settings = cream or CreamConfig()
    if em_layer is not None:
        settings = settings.with_changes(em_layer=CAM_LAYER if em_layer == form.cam_layer else em_layer)
    config = ModelConfig(backbone=name, num_classes=classes, class_names=names, input_size=pre.input_size,
                         mean=pre.mean, std=pre.std, stock_strides=True, cream=settings, cam_form=form)
    _log.debug(f"wrapped {type(network).__name__} as {name}: CAM of {form.cam_layer!r} through {form.classifier!r}"
               f"{f' after {form.norm!r}' if form.norm else ''}, {classes} classes, {pre.input_size} px ({pre.source})")
    return CamModel(config, network).eval()


class CamOutput(NamedTuple):
    """What `CREAM(batch)` gives: logits `(B,C)`, the class each map is of `(B,)`, its softmax
    score `(B,)`, and the score maps `(B,H,W)` in [0, 1] at the input's size."""

    logits: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor


class CREAM:
    """CAM and CREAM for a classifier in memory, torch-cam style: a context manager that puts the
    network in eval mode and gives it back in the mode it was in.

    Example:
        >>> net = torchvision.models.resnet50(weights="IMAGENET1K_V2")  # doctest: +SKIP
        >>> with CREAM(net, name="torchvision/resnet50") as cream:  # doctest: +SKIP
        ...     cream.fit("data/my_photos")                # CREAM's embeddings (wsolevaluation folder)
        ...     out = cream(batch)                         # CREAM maps of the predicted classes
        ...     boxes = cream.boxes(out.maps)              # their boxes, in the batch's pixels
        ...     results = cream.localize(["photo.jpg"])    # classes, scores, boxes in image pixels
        ...     cream.export("model.onnx")                 # the same graph `cream export` writes
    """

    def __init__(self, network: nn.Module, cam_layer: str | None = None, *, em_layer: str | None = None,
                 preprocessing: WeightsPreprocessing | None = None, class_names: Sequence[str] | None = None,
                 cream: CreamConfig | None = None, name: str | None = None):
        self.network = network
        self._was_training = network.training
        self.model = wrap(network, cam_layer, em_layer=em_layer, preprocessing=preprocessing,
                          class_names=class_names, cream=cream, name=name)
        self.network.train(self._was_training)  # eval only inside the `with` block and the calls

    def __enter__(self) -> "CREAM":
        self._was_training = self.network.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        self.network.train(self._was_training)

    @property
    def config(self) -> ModelConfig:
        """The model's description (input size, normalisation, CREAM settings, CAM form)."""
        return self.model.config

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, class_ids: torch.Tensor | Sequence[int] | None = None, *,
                 mode: str = "cream", iterations: int | None = None) -> CamOutput:
        """Maps of a normalised float batch `(B,3,H,W)` (the model's preprocessing applied):
        of `class_ids` (-1 or None: the predicted class), CREAM's ("cream") or CAM's ("cam").
        Computed under `torch.inference_mode()` (the outputs take no part in autograd)."""
        was = self.model.training
        if was:  # (a full traversal of the network: only where needed)
            self.model.eval()
        try:
            ids = None if class_ids is None else torch.as_tensor(class_ids, dtype=torch.long, device=batch.device)
            logits, maps, classes = self.model(batch, ids, mode, iterations)
        finally:
            if was:
                self.model.train()
        scores = logits.float().softmax(1).gather(1, classes[:, None])[:, 0]
        return CamOutput(logits, classes, scores, maps)

    def boxes(self, maps: torch.Tensor, *, threshold: float | None = None, all_contours: bool = False,
              mode: str = "cream") -> list[np.ndarray]:
        """Boxes `(n,4)` [x0, y0, x1, y1] in the batch's pixels of each map of `cream(batch).maps`,
        by the protocol's box extraction (the largest contour's box at `threshold` of the map's
        max; default: the tuned, the shipped, else 0.2, as `Localizer` chooses)."""
        from ..boxes import map_boxes
        from ..runtime import box_threshold
        from .eager import EagerPredictor

        manifest = EagerPredictor(self.model, mode).manifest
        level, _ = box_threshold(manifest, threshold)
        return [map_boxes(m, level, all_contours, bool(manifest.pas)) for m in maps.detach().cpu().numpy()]

    def localize(self, images: Iterable, *, mode: str = "cream", threshold: float | None = None,
                 class_ids: Sequence[int] | None = None, return_maps: bool = False) -> list:
        """Classes, scores and boxes (in each image's pixels) of image paths, PIL images or uint8
        RGB arrays, through the runtime's own decoding, preprocessing and box extraction
        (`Localizer`, as `cream localize` runs an export); `return_maps` keeps each score map."""
        from ..runtime import Localizer
        from .eager import EagerPredictor

        predictor = EagerPredictor(self.model, mode)
        with Localizer(predictor, threshold) as localizer:  # type: ignore[arg-type]
            return localizer(list(images), class_ids=class_ids, return_maps=return_maps)

    def fit(self, data: str | os.PathLike | Iterable | None = None, *, images: str | os.PathLike | None = None,
            metadata: str | os.PathLike | None = None, center: bool | None = None, rounds: int = REFINE_ROUNDS,
            batch_size: int = 32) -> dict:
        """CREAM's embeddings by the embedding pass `cream fit-embeddings` runs: over the train
        split of a wsolevaluation folder (`data`, or `images` and `metadata` roots, as the CLI's
        --data / --images / --metadata), or over re-iterable (images, labels) batches (a
        DataLoader) or a Dataset of (image, label) samples, images normalised as the model
        expects. Returns the pass's record."""
        from ..train.refine import embedding_pass

        center = self.model.config.cream.center if center is None else center
        self.model.eval()
        if data is None or isinstance(data, (str, os.PathLike)):
            from ..metadata import data_paths, read_split
            from ..train.trainer import check_images_exist, split_batches_of
            from ..unreadable import UnreadableImages

            image_root, meta_root = data_paths(data, images, metadata)
            meta = read_split(meta_root / "train", require_localization=False)
            check_images_exist(meta, image_root)
            unreadable = UnreadableImages()
            device = str(next(self.model.parameters()).device)
            record = embedding_pass(self.model, split_batches_of(self.model, meta, image_root, batch_size, device,
                                                                 "embedding pass", unreadable),
                                    bool(center), rounds)
            unreadable.warn("fit")
            return record
        batches = data
        if isinstance(data, Dataset):  # samples: batched as a DataLoader would
            batches = DataLoader(data, batch_size=batch_size)

        def labelled() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for images, labels in batches:  # type: ignore[misc]
                yield torch.as_tensor(images), torch.as_tensor(labels, dtype=torch.long)

        return embedding_pass(self.model, labelled, bool(center), rounds)

    def tune(self, data: str | os.PathLike | None = None, *, images: str | os.PathLike | None = None,
             metadata: str | os.PathLike | None = None, **options) -> dict:
        """`cream tune` on this model (settings chosen on the folder's val split, embeddings
        fitted on its train split); the model takes the chosen settings, embeddings and box
        threshold. `options`: those of `train.tune.tune_model`. Returns the record."""
        from ..metadata import data_paths
        from ..train.tune import tune_model

        image_root, meta_root = data_paths(data, images, metadata)
        chosen, record = tune_model(self.model, image_root, meta_root, **options)
        record.pop("_unreadable").warn("tune")
        model = CamModel(chosen.config, self.network)  # around the caller's network again, not a copy
        model.load_state_dict(chosen.state_dict())
        self.model = model.to(next(chosen.parameters()).device).eval()
        return record

    def save(self, path: str | os.PathLike) -> None:
        """A cream checkpoint (atomic); `cream fit-embeddings / tune / export / eval` take it where
        the network's name is timm/ or torchvision/ (`load_checkpoint(path, network=...)` otherwise)."""
        from .checkpoint import save_checkpoint

        form = self.model.config.cam_form
        assert form is not None
        save_checkpoint(path, self.model, {"wrapped": {"name": self.model.config.backbone,
                                                       "cam_form": dataclasses.asdict(form)}})

    def export(self, path: str | os.PathLike, *, mode: str = "cream", iterations: int | None = None) -> dict:
        """One ONNX graph and its manifest, as `cream export` writes them (`Localizer.load` runs it)."""
        from ..export.onnx_export import export_model

        return dataclasses.asdict(export_model(self.model, path, mode, iterations))

