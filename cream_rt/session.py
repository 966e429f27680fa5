"""Exported models under ONNX Runtime: the session, its manifest checked against the graph, and
the predictor (normalised batch in, logits and maps out). numpy and onnxruntime only."""
from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import CreamError, ModelFileError
from .manifest import MANIFEST_KEY, Manifest

__all__ = ["DEFAULT_PROVIDERS", "ENGINES", "make_session", "read_manifest", "checked_manifest", "class_id_array",
           "model_inputs", "Predictor", "OnnxPredictor", "load_predictor"]

ENGINES = ("onnxruntime", "openvino", "openvino-bf16")  # what runs an export (`Localizer.load(engine=)`)

if TYPE_CHECKING:
    from .openvino_session import OpenVinoPredictor


class Predictor(Protocol):
    """What scoring needs of a model, exported (`OnnxPredictor`) or eager (`EagerPredictor`): its
    input size and normalisation, `run(x, class_ids) -> (logits (B,C), maps (B,S,S), boxes or
    None)` of a normalised batch, and `describe()`."""

    @property
    def input_size(self) -> int: ...

    @property
    def mean(self) -> Sequence[float]: ...

    @property
    def std(self) -> Sequence[float]: ...

    def run(self, x: np.ndarray, class_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...

    def describe(self) -> dict: ...

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)  # see make_session


def make_session(path: str, providers: Sequence[str] | None = None, threads: int | None = None,
                 spinning: bool = True, data: bytes | None = None) -> Any:
    """An ONNX Runtime session tuned for throughput: all graph optimisations, one intra-op
    thread per core, the best available providers (TensorRT, CUDA, CPU) unless given. Without
    `spinning`, idle intra-op threads sleep instead of spinning between runs, leaving the cores
    to the caller's own work (decoding, boxes) at the cost of a slower wake-up. With `data`, the
    model is those bytes (a Ray actor's copy) and `path` only names it in errors. ONNX Runtime's
    QDQ propagation is off: it slows int8 exports (docs/performance.md), fp32 has nothing it acts on."""
    import onnxruntime as ort

    if data is None and not os.path.isfile(path):
        raise ModelFileError(f"{path}: model file not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = set(ort.get_available_providers())
    chosen = [p for p in (providers or DEFAULT_PROVIDERS) if p in available]
    if not chosen:
        raise CreamError(f"none of the providers {list(providers or [])} is available; have {sorted(available)}")
    try:
        return ort.InferenceSession(path if data is None else data, options, providers=chosen,
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:  # corrupt protobuf, unknown op, truncated file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        if Path(path).suffix.lower() in (".pt", ".pth", ".tar", ".ckpt"):
            first = f"a torch checkpoint? export it first: cream export --checkpoint {path} --out m.onnx"
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None


def read_manifest(session, path: str) -> Manifest:
    """The export's manifest, checked against the ONNX Runtime session's graph."""
    return checked_manifest(session.get_modelmeta().custom_metadata_map.get(MANIFEST_KEY), path,
                            [i.name for i in session.get_inputs()], {o.name: o.shape for o in session.get_outputs()})


def checked_manifest(text: str | None, path: str, inputs: list[str], outputs: dict[str, list]) -> Manifest:
    """The manifest `text` of the graph at `path`, checked against the graph's input names and
    output names and shapes (any engine's view of them)."""
    if text is None:
        raise ModelFileError(f"{path}: no cream_rt manifest in the model (not exported by `cream export`)")
    manifest = Manifest.from_json(text, path)
    if inputs != ["images", "class_ids"]:
        raise ModelFileError(f"{path}: expected inputs ['images', 'class_ids'], got {inputs}")
    if list(outputs) != manifest.outputs:
        raise ModelFileError(f"{path}: the graph's outputs {list(outputs)} are not the manifest's {manifest.outputs}")
    classes = outputs.get("logits", [None, None])[-1]
    if isinstance(classes, int) and classes != len(manifest.class_names):
        raise ModelFileError(f"{path}: the manifest names {len(manifest.class_names)} classes but the graph "
                             f"outputs {classes}")
    return manifest


def class_id_array(class_ids, count: int, num_classes: int) -> np.ndarray:
    """`count` class ids as int64, each -1 (the predicted class) or in 0..num_classes-1;
    CreamError for floats, out-of-range values and the wrong length."""
    if class_ids is None:
        return np.full(count, -1, np.int64)
    values = list(class_ids.tolist() if isinstance(class_ids, np.ndarray) else class_ids)
    if len(values) != count:
        raise CreamError(f"class_ids: expected {count} ids (one per image), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CreamError(f"class id {value!r} is not an integer")
        if not -1 <= value < num_classes:
            raise CreamError(f"class id {value} is out of range: expected -1 (predicted) or 0..{num_classes - 1}")
    return np.asarray(values, np.int64).reshape(count)


def model_inputs(x: np.ndarray, class_ids, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The graph's inputs: the batch as contiguous float32 `(B,3,S,S)` and its class ids;
    CreamError for another shape or bad ids."""
    x, size = np.ascontiguousarray(x, dtype=np.float32), manifest.input_size
    if x.ndim != 4 or x.shape[1:] != (3, size, size):
        raise CreamError(f"images must have shape (B, 3, {size}, {size}), got {x.shape}")
    return x, class_id_array(class_ids, len(x), len(manifest.class_names))


class OnnxPredictor:
    """`predictor(x, class_ids) -> (logits, maps)` over an exported model, numpy in and out."""

    def __init__(self, session, manifest: Manifest, path: str):
        self.session, self.manifest, self.path = session, manifest, path
        self.input_size, self.mean, self.std = manifest.input_size, manifest.mean, manifest.std

    @classmethod
    def load(cls, path: str | os.PathLike, providers: Sequence[str] | None = None,
             threads: int | None = None, allow_custom_ops: bool = False, spinning: bool = True) -> "OnnxPredictor":
        """Open an export. A `--fused` export (cream::CosineEM node) runs only with
        `allow_custom_ops` (parity tests: onnxruntime-extensions + torch) or in TensorRT."""
        path = os.fspath(path)
        try:
            session = make_session(path, providers, threads, spinning)
        except ModelFileError as exc:
            if "CosineEM" not in str(exc):
                raise
            if not allow_custom_ops:
                raise ModelFileError(f"{path}: uses the custom op cream::CosineEM (exported with --fused); "
                                     "ONNX Runtime runs the standard-op export: re-export without --fused, "
                                     "or build a TensorRT engine with `cream export --trt`") from None
            from .export.ort_custom import custom_op_session

            session = custom_op_session(path, threads)
        return cls(session, read_manifest(session, path), path)

    def __call__(self, x: np.ndarray, class_ids=None):
        """(logits `(B,C)`, maps `(B,S,S)`) of a normalised batch `x` `(B,3,S,S)`."""
        return self.run(x, class_ids)[:2]

    def run(self, x: np.ndarray, class_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(logits, maps, boxes): boxes `(B,4)` fractions from the box regressor, or None."""
        x, ids = model_inputs(x, class_ids, self.manifest)
        outputs = self.session.run(None, {"images": x, "class_ids": ids})
        return outputs[0], outputs[1], (outputs[3] if self.manifest.regressor else None)

    def describe(self) -> dict:
        m = self.manifest
        return {"engine": "onnxruntime", "providers": self.session.get_providers(), "mode": m.mode,
                "iterations": m.iterations, "backbone": m.backbone}


def load_predictor(path: str | os.PathLike, engine: str = "onnxruntime", providers: Sequence[str] | None = None,
                   threads: int | None = None, spinning: bool = True) -> OnnxPredictor | OpenVinoPredictor:
    """The predictor of an export on `engine` (ENGINES): ONNX Runtime, or OpenVINO's CPU plugin in
    fp32 or bf16 (`openvino_session`); CreamError for another name."""
    if engine == "onnxruntime":
        return OnnxPredictor.load(path, providers, threads, spinning=spinning)
    if engine not in ENGINES:
        raise CreamError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if providers:
        raise CreamError(f"providers are ONNX Runtime's; the {engine} engine runs on the CPU")
    from .openvino_session import OpenVinoPredictor

    return OpenVinoPredictor.load(path, threads, "bf16" if engine == "openvino-bf16" else "f32")
