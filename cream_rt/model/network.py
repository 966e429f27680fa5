"""The CAM model with the RCAM switches and CREAM's context embeddings (docs/method.md 1-3)."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from ..config import CAM_LAYER, ModelConfig
from ..errors import CreamError
from .backbones import Backbone, BackboneSpec, get_backbone, load_imagenet_weights
from .em import (
    Reactivation,
    centered,
    grid_mean_weights,
    minmax,
    reactivate,
    reactivation,
    score_maps,
    side_means,
    to_grid,
)
from .wrapped import CamHead, ModuleBackbone

__all__ = ["CamModel", "create_model", "EmbeddingStatistics", "em_grid_ok", "coarse_grid"]


def coarse_grid(grid: Sequence[int]) -> tuple[int, ...]:
    """The grid one stride-2 step below `grid`: ceil(n / 2) per side, as 'SAME' padding and a
    3x3 (or 1x1) stride-2 convolution with padding 1 (0) both give."""
    return tuple(math.ceil(int(n) / 2) for n in grid)


def em_grid_ok(em: Sequence[int], cam: Sequence[int]) -> bool:
    """Whether the EM can cluster a layer of `em` cells beside a CAM of `cam` cells: the same
    grid, or one stride-2 step finer (the stride-16 layers of a stock stride-32 network), onto
    which the CAM is resized."""
    em_cells, cam_cells = tuple(map(int, em)), tuple(map(int, cam))
    return em_cells == cam_cells or coarse_grid(em_cells) == cam_cells


class EmbeddingStatistics(NamedTuple):
    """Per sample of a batch: label, foreground and background mean features `(B,K)`, and
    whether each mask was non-empty."""

    labels: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    has_fg: torch.Tensor
    has_bg: torch.Tensor


def create_model(backbone: str, num_classes: int, pretrained: bool | str = False, **config) -> "CamModel":
    """The one way to build a CAM model, like timm's `create_model`.

    Args:
        backbone: a registered name (`cream backbones`); its spec gives the default input size
            and the normalisation its weights expect.
        num_classes: classifier outputs.
        pretrained: True loads the backbone's ImageNet weights from their usual source, a
            string from that file or URL; the report is kept in `model.pretrained_report`.
        **config: other `ModelConfig` fields (class_names, input_size, large_feature_map, tap,
            nwc, cream=CreamConfig(...)).
    Returns:
        The model in training mode, on the CPU.

    Example:
        >>> model = create_model("small-cnn", 3, input_size=64)
        >>> logits, maps, classes = model.eval()(torch.zeros(2, 3, 64, 64))
        >>> tuple(maps.shape)
        (2, 64, 64)
    """
    spec = get_backbone(backbone)
    config.setdefault("input_size", spec.input_size)
    config.setdefault("mean", spec.mean)
    config.setdefault("std", spec.std)
    model = CamModel(ModelConfig(backbone=backbone, num_classes=num_classes, **config))
    model.pretrained_report = None
    if pretrained:
        model.pretrained_report = load_imagenet_weights(backbone, model.backbone,
                                                        pretrained if isinstance(pretrained, str) else None)
    return model


def _build_backbone(spec: BackboneSpec, config: ModelConfig, network: nn.Module | None) -> Backbone:
    """The registered backbone of `config`, or the wrapped network (`config.cam_form`): `network`,
    or the one its library builds by name, with a classifier of `config.num_classes`."""
    if config.cam_form is None:
        if network is not None:
            raise CreamError(f"backbone {config.backbone!r} is built by name; network= is for a wrapped network")
        return spec.build(config.large_feature_map, config.stock_strides)
    if config.large_feature_map or not config.stock_strides:
        raise CreamError("a wrapped network keeps its own strides (stock_strides, no large_feature_map)")
    if network is None:
        from .hub import hub_network

        network = hub_network(config.backbone, config.num_classes)
    backbone = ModuleBackbone(network, config.cam_form, config.input_size)
    if backbone.num_classes != config.num_classes:
        raise CreamError(f"{type(network).__name__}'s classifier has {backbone.num_classes} outputs, the model "
                         f"config {config.num_classes} classes")
    return backbone


class CamModel(nn.Module):
    """Backbone -> GAP (or TAP) -> linear classifier, the CAM of a chosen class, and the
    `C x 2 x K` context embeddings (row 0 foreground, row 1 background) as a buffer.

    The model's feature maps (`features`) are the CAM's K channels, followed, where
    `config.cream.em_layer` names an earlier layer, by that layer's channels: what the EM
    clusters (`em_features`); the CAM and the classifier read the first K (`cam_features`)."""

    backbone: Backbone
    classifier: nn.Linear | CamHead
    embeddings: torch.Tensor
    embedding_fitted: torch.Tensor
    feature_center: torch.Tensor
    cam_channels: int
    pretrained_report: dict | None

    def __init__(self, config: ModelConfig, network: nn.Module | None = None):
        """`network`: the network a wrapped model (`config.cam_form`) runs, where its library
        cannot build it by name (`module/CLASS`); its parameters become the model's."""
        super().__init__()
        spec = get_backbone(config.backbone)
        shipped = spec.cream_defaults(config.stock_strides)  # None fields: the backbone's, for this layout
        center = shipped.center if config.cream.center is None else config.cream.center
        em_layer = shipped.em_layer if config.cream.em_layer is None else config.cream.em_layer
        iterations = shipped.iterations if config.cream.iterations is None else config.cream.iterations
        self.backbone = _build_backbone(spec, config, network)
        if em_layer != CAM_LAYER:  # a place named by stage becomes its layer's name
            em_layer = self.backbone.resolve_layer(em_layer)
        config = dataclasses.replace(config.with_cream(center=center, em_layer=em_layer, iterations=iterations),
                                     class_names=list(config.class_names))  # never the caller's object
        self._em_layer = em_layer
        self.cam_channels = self.backbone.out_channels
        self.classifier = self.backbone.head() if isinstance(self.backbone, ModuleBackbone) else \
            nn.Linear(self.cam_channels, config.num_classes)
        with torch.no_grad():
            probe = torch.zeros(1, 3, config.input_size, config.input_size)
            was = self.backbone.training
            self.backbone.eval()
            if em_layer != CAM_LAYER and em_layer not in self.backbone.layer_names():
                raise CreamError(f"em_layer {em_layer!r} is not a layer of {config.backbone}; expected "
                                 f"{CAM_LAYER!r} or one of {', '.join(self.backbone.layer_names())}")
            out, tapped = (self.backbone(probe), None) if em_layer == CAM_LAYER else \
                self.backbone.forward_tap(probe, em_layer)
            self._config = dataclasses.replace(config, feature_size=int(out.shape[-1]))
            k = self.cam_channels
            self.cam_grid = self.em_grid = tuple(int(v) for v in out.shape[-2:])
            if tapped is not None:
                if not em_grid_ok(tapped.shape[-2:], out.shape[-2:]):
                    raise CreamError(f"em_layer {em_layer!r} of {config.backbone} has {tapped.shape[-2]}x"
                                     f"{tapped.shape[-1]} cells at input size {config.input_size}, the CAM "
                                     f"{out.shape[-2]}x{out.shape[-1]}; expected a layer at the CAM's resolution "
                                     f"or one stride-2 step finer")
                k = int(tapped.shape[1])
                self.em_grid = tuple(int(v) for v in tapped.shape[-2:])
            self.backbone.train(was)
        # where the EM layer is one stride-2 step finer, `features` resizes the CAM's features onto its
        # grid, and `logits` pools them with weights that give the CAM grid's own mean
        self.em_finer = self.em_grid != self.cam_grid
        # Zero embeddings until fitted (cosine 0 to every feature: the EM then changes nothing, the
        # map is CAM's); `embedding_fitted` marks the classes whose pair came from their own images,
        # the others get the class-agnostic fallback (`fill_unfitted`), never random values.
        self.register_buffer("embeddings", torch.zeros(config.num_classes, 2, k))
        self.register_buffer("embedding_fitted", torch.zeros(config.num_classes, dtype=torch.bool))
        # The mean feature subtracted before the EM where config.cream.center (zeros until an
        # embedding pass sets it; checkpoints saved before it existed load it as zeros).
        self.register_buffer("feature_center", torch.zeros(k))

    def with_em_layer(self, layer: str | None) -> "CamModel":
        """A copy of this model whose EM clusters `layer` (None: the backbone's default): the same
        backbone and classifier; zero embeddings and center until an embedding pass."""
        config = dataclasses.replace(self.config, cream=dataclasses.replace(self.config.cream, em_layer=layer))
        network = copy.deepcopy(self.backbone.net) if isinstance(self.backbone, ModuleBackbone) else None
        model = CamModel(config, network)
        fresh = {"embeddings": model.embeddings, "feature_center": model.feature_center,  # the new layer's sizes
                 "embedding_fitted": model.embedding_fitted}
        model.load_state_dict({**self.state_dict(), **fresh})
        return model.train(self.training)

    @property
    def config(self) -> ModelConfig:
        """The model's description (frozen): set a changed copy, `model.config = model.config.with_cream(...)`;
        what the weights and buffers were built for (backbone, classes, input size, EM layer) cannot change."""
        return self._config

    @config.setter
    def config(self, config: ModelConfig) -> None:
        fixed = ("backbone", "num_classes", "input_size", "large_feature_map", "stock_strides", "feature_size",
                 "cam_form")
        changed = [f for f in fixed if getattr(config, f) != getattr(self._config, f)]
        changed += ["cream.em_layer"] if config.cream.em_layer != self.em_layer else []
        if changed:
            raise CreamError(f"cannot change {', '.join(changed)} of a built model (use create_model or "
                             f"with_em_layer)")
        self._config = config

    @property
    def em_layer(self) -> str:
        """The layer the EM clusters, fixed when the model is built (the embeddings and the center
        are of its features; `with_em_layer` makes a model for another layer)."""
        return self._em_layer

    def features(self, images: torch.Tensor, with_em: bool = True) -> torch.Tensor:
        """`(B, K [+ K_em], h, w)`: the CAM's features, then the EM layer's where it is another
        (not with `with_em` False: a CAM-only pass, e.g. the CAM export); where the EM layer is
        finer, the CAM's features resized onto its grid (`to_grid`)."""
        layer = self.em_layer
        if layer == CAM_LAYER or not with_em:
            return self.backbone(images)
        out, em = self.backbone.forward_tap(images, layer)
        return torch.cat((to_grid(out, em.shape[-2:]), em), 1)

    def cam_features(self, features: torch.Tensor) -> torch.Tensor:
        """The CAM's (and the classifier's) channels of `features`."""
        return features if self.em_layer == CAM_LAYER else features[:, :self.cam_channels]

    def em_features(self, features: torch.Tensor) -> torch.Tensor:
        """The channels the EM clusters (`config.cream.em_layer`), of `features`."""
        return features if self.em_layer == CAM_LAYER else features[:, self.cam_channels:]

    @property
    def center(self) -> torch.Tensor | None:
        """The feature center the EM subtracts (`CreamConfig.center`), or None."""
        return self.feature_center if self.config.cream.center else None

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """GAP, or RCAM's TAP in training: mean of the entries > tap_tau * max per channel."""
        if self.config.tap and self.training:
            flat = features.flatten(2)
            keep = (flat > self.config.tap_tau * flat.amax(dim=2, keepdim=True)).to(flat.dtype)
            return (flat * keep).sum(2) / (keep.sum(2) + 1e-6)
        return features.mean(dim=(2, 3))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's logits `(B,C)`: those of the network itself, also where `features`
        holds the CAM's features resized onto a finer EM layer's grid."""
        cam_features = self.cam_features(features)
        if self.em_finer and features.shape[1] > self.cam_channels:  # resized by `features`
            size = tuple(cam_features.shape[-2:])
            weights = grid_mean_weights(size, coarse_grid(size)).to(features.device, features.dtype)
            return self.classifier(torch.matmul(cam_features.flatten(2), weights))
        return self.classifier(self.pool(cam_features))

    def cam(self, features: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """CAM_c = sum_k W[c,k] F[k] (no bias), with max(W, 0) under NWC: `(B,h,w)`."""
        classifier = self.classifier
        weight = classifier.rows(class_ids) if isinstance(classifier, CamHead) else classifier.weight[class_ids]
        if self.config.nwc:
            weight = weight.clamp(min=0)
        return torch.einsum("bk,bkhw->bhw", weight, self.cam_features(features))

    def forward(self, images: torch.Tensor, class_ids: torch.Tensor | None = None,
                mode: str = "cream", iterations: int | None = None,
                fused: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits `(B,C)`, score maps `(B,H,W)` in [0,1] and the class ids used: the given ones,
        or the predicted top-1 where a class id is -1 or none is given. `fused` runs CREAM's EM
        in the fused C++/CUDA op (same maps within 1e-5)."""
        t = self.config.cream.iterations if iterations is None else iterations
        assert t is not None  # a built model's config has T
        with_em = mode == "cream" and t > 0
        finer = self.em_finer and with_em
        if isinstance(self.backbone, ModuleBackbone):
            features, em, logits = self._network_pass(images, with_em)
        else:
            # on a finer EM layer the one-channel CAM is resized, not the CAM's K features (the same
            # maps by linearity, without resizing and concatenating K channels per image)
            features, em = self.backbone.forward_tap(images, self.em_layer) if finer else \
                (self.features(images, with_em=with_em), None)
            logits = self.logits(features)
        predicted = logits.argmax(dim=1)
        if class_ids is None:
            class_ids = predicted
        else:
            class_ids = torch.where(class_ids < 0, predicted, class_ids)
        if em is not None:  # the finer EM layer's features
            cam = to_grid(self.cam(features, class_ids), em.shape[-2:])
            maps = self.maps_from_cam(cam, em, class_ids, mode, iterations, fused)
        else:
            maps = self.maps_from_features(features, class_ids, mode, iterations, fused)
        return logits, score_maps(maps, images.shape[-2:]), class_ids

    def _network_pass(self, images: torch.Tensor,
                      with_em: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """A wrapped network's forward: (the features as `forward` uses them, the finer EM layer's
        or None, the logits its own classifier computed: nothing of its head computed twice)."""
        assert isinstance(self.backbone, ModuleBackbone)
        classifier, layer = self.backbone.form.classifier, self.em_layer
        em_tap = (layer,) if with_em and layer != CAM_LAYER else ()
        out, tapped = self.backbone.forward_taps(images, (classifier, *em_tap))
        logits = tapped[classifier]
        logits = logits.mean((2, 3)) if logits.ndim == 4 else logits  # a 1x1 conv classifier's (B,C,h,w)
        if not em_tap:
            return out, None, logits
        if self.em_finer:
            return out, tapped[layer], logits
        return torch.cat((out, tapped[layer]), 1), None, logits

    def maps_from_features(self, features: torch.Tensor, class_ids: torch.Tensor, mode: str = "cream",
                           iterations: int | None = None, fused: bool = False) -> torch.Tensor:
        """Feature-resolution maps: minmax(CAM) for 'cam', `z~ + minmax(CAM)` for 'cream'."""
        return self.maps_from_cam(self.cam(features, class_ids), self.em_features(features), class_ids, mode,
                                  iterations, fused)

    def maps_from_cam(self, cam: torch.Tensor, em: torch.Tensor, class_ids: torch.Tensor, mode: str = "cream",
                      iterations: int | None = None, fused: bool = False) -> torch.Tensor:
        """`maps_from_features` from the CAM `(B,h,w)` and the EM layer's features on its grid."""
        t = self.config.cream.iterations if iterations is None else iterations
        if mode == "cam" or t == 0:
            return reactivate(cam.unsqueeze(1), cam, self.embeddings[class_ids], iterations=0)
        if mode != "cream":
            raise ValueError(f"mode must be 'cam' or 'cream', got {mode!r}")
        if fused:
            return reactivate(em, cam, self.embeddings[class_ids], self.config.cream, iterations=t, fused=True,
                              center=self.center)
        return self.reactivation(em, cam, class_ids, t).map

    def reactivation(self, em: torch.Tensor, cam: torch.Tensor, class_ids: torch.Tensor,
                     iterations: int | None = None) -> Reactivation:
        """CREAM's re-activation with this model's settings and embeddings (T >= 1) from the EM
        layer's features `em (B,K,h,w)` and the CAM `(B,h,w)` of `class_ids`."""
        return reactivation(em, cam, self.embeddings[class_ids], self.config.cream, iterations=iterations,
                            center=self.center)

    @torch.no_grad()
    def update_embeddings(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Context-embedding learning (docs/method.md 3.1), no gradient: per sample in batch order,
        V[y] <- lambda V[y] + (1 - lambda) f, for the foreground {minmax(CAM_y) >= tau} and the
        background means of the raw (or, with feature_mean "unit", L2-normalised) features; a
        side with an empty mask is skipped."""
        self.apply_embedding_statistics(self.embedding_statistics(features, labels))

    @torch.no_grad()
    def embedding_statistics(self, features: torch.Tensor, labels: torch.Tensor) -> EmbeddingStatistics:
        """Each sample's foreground and background feature means and whether its masks are
        non-empty: all the momentum update needs, so that data-parallel ranks can gather them
        and apply one update in one order (`apply_embedding_statistics`)."""
        features = features.detach().float()
        cam = minmax(self.cam(features, labels).flatten(1), (1,))
        fg = (cam >= self.config.cream.tau).to(features.dtype)  # (B,N)
        means = side_means(centered(self.em_features(features).flatten(2), self.center), fg,
                           self.config.cream.feature_mean == "unit")
        n_fg = fg.sum(1)
        return EmbeddingStatistics(labels.detach().long(), means[:, 0], means[:, 1], n_fg > 0, n_fg < fg.shape[1])

    @torch.no_grad()
    def apply_embedding_statistics(self, stats: EmbeddingStatistics) -> None:
        """The momentum updates of `stats`, sample by sample in their order; a class updated
        becomes fitted (`embedding_fitted`)."""
        lam = self.config.cream.momentum
        for i, y in enumerate(stats.labels.tolist()):
            if stats.has_fg[i]:
                self.embeddings[y, 0] = lam * self.embeddings[y, 0] + (1 - lam) * stats.fg[i]
            if stats.has_bg[i]:
                self.embeddings[y, 1] = lam * self.embeddings[y, 1] + (1 - lam) * stats.bg[i]
            if stats.has_fg[i] or stats.has_bg[i]:
                self.embedding_fitted[y] = True

    @torch.no_grad()
    def reset_embeddings(self) -> None:
        """Back to zero embeddings, no class fitted (before a fresh momentum fit)."""
        self.embeddings.zero_()
        self.embedding_fitted.zero_()

    @torch.no_grad()
    def fill_unfitted(self, image_mean: torch.Tensor | None = None) -> int:
        """The class-agnostic pair for every class without a fitted one (for all classes under
        `embeddings: agnostic`): `image_mean (2,K)`, the pair fitted on all images, where
        `fallback: image-mean` (or agnostic) and it is given, else the mean of the fitted classes'
        pairs. Returns how many classes had no pair of their own; with none fitted at all the
        embeddings stay zero (the maps are CAM's)."""
        fitted, c = self.embedding_fitted, self.config.cream
        if not bool(fitted.any()):
            return 0
        agnostic = c.embeddings == "agnostic"
        use_images = agnostic or c.fallback == "image-mean"
        pair = image_mean if image_mean is not None and use_images else self.embeddings[fitted].mean(0)
        self.embeddings[torch.ones_like(fitted) if agnostic else ~fitted] = pair.to(self.embeddings.dtype)
        return int((~fitted).sum())
