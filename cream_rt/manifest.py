"""The manifest embedded in an exported ONNX model (metadata_props key `cream_rt.manifest`):
everything the torch-free runtime needs, validated on load. No torch, no onnx import."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .errors import ModelFileError

__all__ = ["MANIFEST_KEY", "MANIFEST_FORMAT", "MANIFEST_VERSION", "Manifest"]

MANIFEST_KEY = "cream_rt.manifest"
MANIFEST_FORMAT = "cream_rt.onnx"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """What an exported graph computes and how to feed it."""

    input_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    mode: str  # "cam" or "cream"
    iterations: int
    beta: float
    tau: float
    backbone: str
    feature_size: int
    checkpoint_sha256: str
    versions: dict = field(default_factory=dict)
    fused: bool = False
    precision: str = "fp32"  # "int8": the backbone quantized (`cream export --int8`)
    quantization: dict = field(default_factory=dict)  # int8: the recipe (export/quantize.py), else empty
    feature_mean: str = "raw"  # the EM's M-step mean ("unit" or "raw"); files without the field are raw
    pas: bool = False  # boxes: thresholds relative to the map's 90th percentile (RCAM's PaS)
    regressor: bool = False  # a `boxes` output from CREAM's box regressor (its boxes are the boxes)
    center: bool = False  # the EM clusters features minus the training split's mean (CreamConfig.center)
    em_layer: str = "cam"  # the layer whose features the EM clusters (CreamConfig.em_layer)
    calibration: str = "omega"  # files without the field predate cam-mean
    embeddings: str = "per-class"  # or "agnostic": one pair for every class
    fallback: str = "class-mean"  # the pair of classes without a fitting image
    fallback_classes: list[int] = field(default_factory=list)  # the classes that use it
    box_threshold: float | None = None  # `cream tune`'s threshold, the default of `cream localize`
    network_threshold: float | None = None  # the backbone's shipped threshold for this mode, used untuned
    tuned: dict = field(default_factory=dict)  # `cream tune`'s chosen settings and their val scores
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        """Parse and validate; ModelFileError if the manifest is from another format or version."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ModelFileError(f"{source}: the cream_rt manifest is not valid JSON") from None
        if data.get("format") != MANIFEST_FORMAT:
            raise ModelFileError(f"{source}: not a cream_rt export (manifest format {data.get('format')!r})")
        if data.get("version") != MANIFEST_VERSION:
            raise ModelFileError(f"{source}: manifest version {data.get('version')!r} is not supported by this "
                                 f"cream-rt (expected {MANIFEST_VERSION}); re-export the model")
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
        if not isinstance(self.quantization, dict):
            return f"quantization must be an object, got {self.quantization!r}"
        for name in ("box_threshold", "network_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < 1):
                return f"{name} must be a number in [0, 1) or null, got {value!r}"
        return None
