"""The model configuration saved in checkpoints and manifests (JSON-ready, no torch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FEATURE_MEANS", "CALIBRATIONS", "EMBEDDINGS", "FALLBACKS",
           "LEGACY_FEATURE_MEAN",
           "LEGACY_CALIBRATION", "LEGACY_CENTER", "CAM_LAYER", "LEGACY_EM_LAYER", "REFINE_ROUNDS", "CreamConfig",
           "ModelConfig"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_MEANS = ("raw", "unit")
CALIBRATIONS = ("omega", "cam-mean", "none")
EMBEDDINGS = ("per-class", "agnostic")
FALLBACKS = ("class-mean", "image-mean")
LEGACY_FEATURE_MEAN = "raw"  # what a saved config without `feature_mean` was computed with
LEGACY_CALIBRATION = "omega"  # what a saved config without `calibration` was computed with
LEGACY_CENTER = False  # a saved config without `center` clusters the features as they are
CAM_LAYER = "cam"  # em_layer: the EM clusters the CAM's own features (the backbone's output)
LEGACY_EM_LAYER = CAM_LAYER  # a saved config without `em_layer` clusters the CAM's features
REFINE_ROUNDS = 1  # refinement rounds of the embedding pass (`cream train`, `cream fit-embeddings`)


@dataclass
class CreamConfig:
    """CREAM hyperparameters (docs/method.md section 3); T counts E-steps (interpretation)."""

    # T; None (default): the backbone's choice, `BackboneSpec.iterations` (the paper's 2, or what
    # the real-photo cells chose), resolved when the model is built
    iterations: int | None = None
    beta: float = 8.0
    tau: float = 0.2
    momentum: float = 0.8  # lambda of the context-embedding update
    # What the context embeddings and the EM's M-step average: "unit" (default): L2-normalised
    # features, the maximum-likelihood mean direction of the cosine (von Mises-Fisher-like) base
    # model, which keeps the high-norm features of the most discriminative part from outweighing
    # the rest of the object; or "raw" features, the paper's literal wording. Checkpoints saved
    # without this field predate it and load as "raw" (LEGACY_FEATURE_MEAN).
    feature_mean: str = "unit"
    # The calibration (docs/method.md 3.3): "cam-mean" (default: keep the
    # component over which minmax(CAM) is higher on average, weighted by responsibility), "omega"
    # (the paper: the larger mean responsibility where minmax(CAM) >= tau) or "none" (keep the one
    # started from the foreground embedding). Configs saved without it load as LEGACY_CALIBRATION.
    calibration: str = "cam-mean"
    # Deviations from the paper, off by default (ablated by the accuracy suite):
    # rings of border feature cells left out of the M-step and the calibration region
    # (zero padding gives them features of their own) ...
    border: int = 0
    # ... and the EM's grid: features and CAM bilinearly upsampled by this factor first, so the
    # re-activation map has finer cells than the feature map ...
    upsample: int = 1
    # ... and the EM's start: the class embeddings mixed with the image's own mean feature over
    # {minmax(CAM) >= tau} (foreground, weight adapt_fg) or the rest (background, adapt_bg), in [0, 1].
    adapt_fg: float = 0.0
    adapt_bg: float = 0.0
    # The EM, the embedding update and the refinement see each feature minus the model's
    # `feature_center` buffer (the training split's mean feature, set by the embedding pass at the
    # end of `cream train` or by `cream fit-embeddings`): on a pretrained backbone every cell
    # shares a large mean direction that dominates the cosines (docs/method.md 3.6). None (default):
    # the backbone's choice, `BackboneSpec.center` (on where the EM clusters post-ReLU ImageNet
    # features, where the suite gained +0.1 to +14.8; off for small-cnn, whose `tinted` cells lose
    # 0.8, and for EfficientNet-Lite0, whose default EM layer is signed: docs/method.md 3.7),
    # resolved to true or false when the model is built, so a checkpoint always holds a bool.
    center: bool | None = None
    # The features the EM clusters (and the embeddings and the center are taken of): "cam", the
    # CAM's own features (the backbone's output, the paper), or the output of an earlier layer
    # of the backbone at the same resolution, named as `cream backbones --json` lists them
    # (e.g. "_blocks.7" of EfficientNet-Lite0, the end of its 80-channel stage): a classifier's
    # last features separate classes, earlier ones group an object's parts (docs/method.md 3.7).
    # None (default): the backbone's choice, `BackboneSpec.em_layer`, resolved when the model is
    # built. Configs saved without it load as LEGACY_EM_LAYER.
    em_layer: str | None = None
    # "per-class" (the paper): a foreground/background pair per class; "agnostic": one pair, fitted
    # on every image, for all classes (the CAM still picks the class's object).
    embeddings: str = "per-class"
    # What a class with no fitting image starts from (never random embeddings): "class-mean", the
    # mean of the fitted classes' pairs, or "image-mean", the pair fitted on all images alike (the
    # agnostic pair; the momentum rule has only class-mean). Measured: docs/method.md 3.8.
    fallback: str = "class-mean"

    def __post_init__(self) -> None:
        if self.feature_mean not in FEATURE_MEANS:
            raise ValueError(f"feature_mean must be one of {FEATURE_MEANS}, got {self.feature_mean!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.iterations is not None and (isinstance(self.iterations, bool) or not isinstance(self.iterations, int)
                                            or not 0 <= self.iterations <= 64):
            raise ValueError(f"iterations must be an integer in [0, 64] or None, got {self.iterations!r}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {self.embeddings!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.center is not None and not isinstance(self.center, bool):
            raise ValueError(f"center must be true, false or None (the backbone's default), got {self.center!r}")
        if self.em_layer is not None and (not isinstance(self.em_layer, str) or not self.em_layer):
            raise ValueError(f"em_layer must be a layer name or None (the backbone's default), got {self.em_layer!r}")
        if not isinstance(self.border, int) or self.border < 0:
            raise ValueError(f"border must be a non-negative integer, got {self.border!r}")
        if not isinstance(self.upsample, int) or not 1 <= self.upsample <= 8:
            raise ValueError(f"upsample must be an integer in [1, 8], got {self.upsample!r}")
        for name in ("adapt_fg", "adapt_bg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model and preprocess its input."""

    backbone: str = "small-cnn"
    num_classes: int = 6
    class_names: list[str] = field(default_factory=list)
    input_size: int = 224
    large_feature_map: bool = False
    # every stride of the backbone as its ImageNet weights were trained (an imported classifier:
    # `cream import --from imagenet|torchvision`, which then predicts what the stock network
    # predicts); False: the WSOL layout, the last stride removed (models trained by `cream train`).
    # Files saved before the field were all the WSOL layout.
    stock_strides: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tap: bool = False  # RCAM thresholded average pooling (training)
    tap_tau: float = 0.1
    nwc: bool = False  # RCAM negative weight clamping (inference)
    pas: bool = False  # RCAM percentile as a standard (box extraction)
    cream: CreamConfig = field(default_factory=CreamConfig)
    feature_size: int = 0  # filled in when the model is built
    # `cream tune`'s box threshold for `cream localize` (fraction of the map's max) and its record
    # (the chosen settings with their val scores); None / empty: not tuned
    box_threshold: float | None = None
    tuned: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        cream_fields = dict(d.pop("cream", {}))
        cream_fields.setdefault("feature_mean", LEGACY_FEATURE_MEAN)  # saved before the field existed
        cream_fields.setdefault("calibration", LEGACY_CALIBRATION)  # saved before the field existed
        cream_fields.setdefault("center", LEGACY_CENTER)  # saved before the field existed
        cream_fields.setdefault("em_layer", LEGACY_EM_LAYER)  # saved before the field existed
        cream_fields.setdefault("iterations", 2)  # every saved config has it; 2 was the only default
        cream = CreamConfig(**cream_fields)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d.pop("fused", None)  # a run-time switch that older checkpoints saved; not part of the model
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(cream=cream, **d)
