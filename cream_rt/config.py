"""The model description saved in checkpoints and export manifests: one place for every
default, frozen (change a copy with `dataclasses.replace` or `with_cream`), validated where it
is built, versioned with an explicit migration for each older format. No torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FEATURE_MEANS", "CALIBRATIONS", "EMBEDDINGS", "FALLBACKS", "CAM_LAYER",
           "ACTIVATIONS", "REFINE_ROUNDS", "CONFIG_VERSION", "CreamConfig", "CamForm", "ModelConfig", "migrate_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FeatureMean = Literal["raw", "unit"]
Calibration = Literal["omega", "cam-mean", "none"]
Embeddings = Literal["per-class", "agnostic"]
Fallback = Literal["class-mean", "image-mean"]
Activation = Literal["none", "relu"]
FEATURE_MEANS: tuple[str, ...] = get_args(FeatureMean)
CALIBRATIONS: tuple[str, ...] = get_args(Calibration)
EMBEDDINGS: tuple[str, ...] = get_args(Embeddings)
FALLBACKS: tuple[str, ...] = get_args(Fallback)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
CAM_LAYER = "cam"  # em_layer: the EM clusters the CAM's own features (the backbone's output)
REFINE_ROUNDS = 1  # refinement rounds of the embedding pass (`cream train`, `cream fit-embeddings`)
CONFIG_VERSION = 2  # 2: every field written; 1 (checkpoints before 2026-12-08): fields could be missing


@dataclass(frozen=True)
class CreamConfig:
    """CREAM hyperparameters (docs/method.md 3; the choices are measured in 3.3-3.10). None:
    the backbone's choice for its layout (`BackboneSpec.cream_defaults`), resolved when the model
    is built, so a built model's config holds values.

    Example:
        >>> CreamConfig(iterations=1, calibration="omega").with_changes(beta=6.0).beta
        6.0
    """

    iterations: int | None = None  # T, the E-steps
    beta: float = 8.0  # sharpness of the cosine base model
    tau: float = 0.2  # the calibration region {minmax(CAM) >= tau} and the embeddings' foreground
    momentum: float = 0.8  # lambda of the context-embedding update
    # what the embedding update and the M-step average: L2-normalised features (the mean direction of
    # the cosine model) or the raw features (the paper's wording)
    feature_mean: FeatureMean = "unit"
    # which EM component is the foreground: the one with the higher mean minmax(CAM) ("cam-mean"), the
    # paper's larger responsibility over {minmax(CAM) >= tau} ("omega"), or the one started from it ("none")
    calibration: Calibration = "cam-mean"
    border: int = 0  # rings of border cells left out of the M-step and the calibration region
    upsample: int = 1  # the EM's grid: features and CAM bilinearly upsampled by this factor first
    adapt_fg: float = 0.0  # the EM's start: the embeddings mixed with the image's own side means
    adapt_bg: float = 0.0
    # the EM sees each feature minus the training split's mean feature (the `feature_center` buffer)
    center: bool | None = None
    # the features the EM clusters: the CAM's own ("cam") or an earlier layer at the CAM's grid or one
    # stride-2 step finer, named as `cream backbones --json` lists them or by place ("stage5.last")
    em_layer: str | None = None
    embeddings: Embeddings = "per-class"  # a foreground/background pair per class, or one for all
    fallback: Fallback = "class-mean"  # the pair of a class with no fitting image

    def with_changes(self, **changes) -> "CreamConfig":
        """A copy with `changes` (validated like a new config)."""
        return replace(self, **changes)

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


@dataclass(frozen=True)
class CamForm:
    """Where the CAM of a wrapped network (any classifier: `cream_rt.model.api`) is: the module
    whose output is the feature map the head pools, the activation the forward applies to it
    outside any module (DenseNet's functional ReLU), the classifier module (a linear layer or a
    1x1 convolution), and the norm between the pooling and the classifier (ConvNeXt), all as
    module names of the network. Found and checked against the network's own logits when it is
    wrapped (`cream_rt.model.cam_form.find_cam_form`).

    Example:
        >>> CamForm(cam_layer="layer4", classifier="fc").activation
        'none'
    """

    cam_layer: str
    classifier: str
    activation: Activation = "none"
    norm: str | None = None

    def __post_init__(self) -> None:
        for name in ("cam_layer", "classifier"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a module name, got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm is not None and (not isinstance(self.norm, str) or not self.norm):
            raise ValueError(f"norm must be a module name or None, got {self.norm!r}")


@dataclass(frozen=True)
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
    # a wrapped network (`backbone` "timm/NAME", "torchvision/NAME" or "module/CLASS"): where its CAM
    # is; None for the registered backbones
    cam_form: CamForm | None = None

    def with_cream(self, **changes) -> "ModelConfig":
        """A copy whose CREAM settings have `changes`."""
        return replace(self, cream=replace(self.cream, **changes))

    def to_dict(self) -> dict:
        """JSON-ready, every field (the format `from_dict` reads at CONFIG_VERSION)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict, version: int = CONFIG_VERSION) -> "ModelConfig":
        """The config saved as `d` in format `version` (older ones migrated); ValueError for
        unknown fields or values."""
        d = dict(migrate_config(d, version))
        cream = CreamConfig(**d.pop("cream", {}))
        form = d.pop("cam_form", None)
        if form is not None:
            d["cam_form"] = CamForm(**form)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(cream=cream, **d)


# what a version-1 file computed with where a field was missing (each field was added later)
_V1_CREAM = {"feature_mean": "raw", "calibration": "omega", "center": False, "em_layer": CAM_LAYER, "iterations": 2}


def migrate_config(d: dict, version: int) -> dict:
    """A saved config dict of format `version` in the current format (CONFIG_VERSION): version 1
    gets the values its missing fields meant then (`_V1_CREAM`, the WSOL layout) and loses its
    run-time `fused` switch. ValueError for a version this cream-rt does not know."""
    if version == CONFIG_VERSION:
        return d
    if version != 1:
        raise ValueError(f"model config version {version!r} is not supported (expected 1 or {CONFIG_VERSION})")
    d = {k: v for k, v in d.items() if k != "fused"}
    d["cream"] = {**_V1_CREAM, **d.get("cream", {})}
    return d
