"""The manifest embedded in an exported ONNX model (metadata_props key `cream_rt.manifest`):
everything the torch-free runtime needs, validated on load. No torch, no onnx import."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .errors import ModelFileError

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
    precision: str = "fp32"  # "int8": convolutions quantized (`cream export --int8`)
    feature_mean: str = "raw"  # the EM's M-step mean ("unit" or "raw"); files without the field are raw
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
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ModelFileError(f"{source}: incomplete cream_rt manifest ({exc})") from None
