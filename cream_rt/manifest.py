"""The manifest embedded in an exported ONNX model (metadata_props key `cream_rt.manifest`):
the runtime's contract (input, normalisation, classes, outputs, how boxes are read) plus the
model's config verbatim, validated on load; older versions are migrated. No torch, no onnx."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .config import ModelConfig, migrate_config
from .errors import ModelFileError

__all__ = ["MANIFEST_KEY", "MANIFEST_FORMAT", "MANIFEST_VERSION", "OUTPUTS", "REGRESSOR_OUTPUT", "Manifest",
           "migrate_manifest"]

MANIFEST_KEY = "cream_rt.manifest"
MANIFEST_FORMAT = "cream_rt.onnx"
MANIFEST_VERSION = 2  # 2: the model's config verbatim under `model`; 1: its fields copied one by one
OUTPUTS = ("logits", "maps", "class_ids_used")  # every export's outputs, in order
REGRESSOR_OUTPUT = "boxes"  # (B,4) fractions of the image, the box regressor's, after OUTPUTS when exported with one


@dataclass(frozen=True)
class Manifest:
    """What an exported graph computes and how to feed it.

    Example:
        >>> from cream_rt.runtime import OnnxPredictor
        >>> OnnxPredictor.load("model.onnx").manifest.input_size  # doctest: +SKIP
        224
    """

    input_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    mode: str  # "cam" or "cream"
    iterations: int  # the E-steps unrolled in the graph (0 for "cam")
    model: dict  # the exported model's `ModelConfig.to_dict()` (cream_rt.config, CONFIG_VERSION)
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    pas: bool = False  # boxes: thresholds relative to the map's 90th percentile (RCAM's PaS)
    box_threshold: float | None = None  # `cream tune`'s threshold, the default of `cream localize`
    network_threshold: float | None = None  # the backbone's shipped threshold for this mode, used untuned
    precision: str = "fp32"  # "int8": the backbone quantized (`cream export --int8`)
    quantization: dict = field(default_factory=dict)  # int8: the recipe (export/quantize.py), else empty
    fused: bool = False  # one cream::CosineEM node (TensorRT) instead of the unrolled EM
    fallback_classes: list[int] = field(default_factory=list)  # classes whose embeddings are the fallback pair
    checkpoint_sha256: str = ""
    versions: dict = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    @property
    def config(self) -> ModelConfig:
        """The exported model's config."""
        return ModelConfig.from_dict(self.model)

    @property
    def backbone(self) -> str:
        return self.model["backbone"]

    @property
    def regressor(self) -> bool:
        """Whether the boxes come from the box regressor's output."""
        return REGRESSOR_OUTPUT in self.outputs

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        """Parse, migrate and validate; ModelFileError if the manifest is from another format or
        version, or its values are wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ModelFileError(f"{source}: the cream_rt manifest is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ModelFileError(f"{source}: not a cream_rt export (manifest format {found!r})")
        if data.get("version") not in (1, MANIFEST_VERSION):
            raise ModelFileError(f"{source}: manifest version {data.get('version')!r} is not supported by this "
                                 f"cream-rt (expected 1 to {MANIFEST_VERSION}); re-export the model")
        data = migrate_manifest(data)
        known = set(cls.__dataclass_fields__)
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ModelFileError(f"{source}: incomplete cream_rt manifest ({exc})") from None
        problem = manifest.problem()
        if problem:
            raise ModelFileError(f"{source}: invalid cream_rt manifest: {problem}")
        return manifest

    def problem(self) -> str | None:
        """What is wrong with the values (a hand-edited or corrupted manifest), or None."""
        def numbers(values, count):
            return (isinstance(values, list) and len(values) == count
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                            for v in values))

        if not isinstance(self.input_size, int) or not 16 <= self.input_size <= 8192:
            return f"input_size must be an integer in [16, 8192], got {self.input_size!r}"
        if not numbers(self.mean, 3):
            return f"mean must be 3 finite numbers, got {self.mean!r}"
        if not numbers(self.std, 3) or min(self.std) <= 0:
            return f"std must be 3 finite positive numbers, got {self.std!r}"
        if not isinstance(self.class_names, list) or not self.class_names or \
                not all(isinstance(n, str) for n in self.class_names):
            return "class_names must be a non-empty list of strings"
        if self.mode not in ("cam", "cream"):
            return f"mode must be 'cam' or 'cream', got {self.mode!r}"
        if not isinstance(self.iterations, int) or not 0 <= self.iterations <= 64:
            return f"iterations must be an integer in [0, 64], got {self.iterations!r}"
        if self.outputs not in (list(OUTPUTS), [*OUTPUTS, REGRESSOR_OUTPUT]):
            return f"outputs must be {list(OUTPUTS)} (and {REGRESSOR_OUTPUT!r}), got {self.outputs!r}"
        if not isinstance(self.quantization, dict):
            return f"quantization must be an object, got {self.quantization!r}"
        for name in ("box_threshold", "network_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < 1):
                return f"{name} must be a number in [0, 1) or null, got {value!r}"
        try:
            self.config  # noqa: B018 (validates the model's config)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return f"model: {str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__}"
        return None


_V1_CREAM_FIELDS = ("iterations", "beta", "tau", "feature_mean", "center", "em_layer", "calibration", "embeddings",
                    "fallback")
_V1_MODEL_FIELDS = ("backbone", "class_names", "input_size", "mean", "std", "pas", "feature_size", "box_threshold",
                    "tuned")


def migrate_manifest(data: dict) -> dict:
    """A manifest dict in the current version: version 1 had the model's settings as top-level
    fields (those it lacked meant what `config.migrate_config` gives version-1 configs) and a
    `regressor` flag; they become `model` and `outputs`."""
    if data.get("version") != 1:
        return data
    data = dict(data)
    model = {k: data[k] for k in _V1_MODEL_FIELDS if k in data}  # the contract keeps its own copies
    model["cream"] = {k: data[k] if k == "iterations" else data.pop(k) for k in _V1_CREAM_FIELDS if k in data}
    model["num_classes"] = len(model.get("class_names") or [])
    for k in ("backbone", "feature_size", "tuned"):
        data.pop(k, None)
    data["model"] = migrate_config(model, 1) if "backbone" in model else None
    data["outputs"] = [*OUTPUTS, REGRESSOR_OUTPUT] if data.pop("regressor", False) else list(OUTPUTS)
    data["version"] = MANIFEST_VERSION
    return data
