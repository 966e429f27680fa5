"""Exported models under OpenVINO's CPU plugin (`pip install 'cream-rt[openvino]'`): the same ONNX
file and manifest, the interface of `session.OnnxPredictor`, in fp32 or bf16; an int8 export runs
its int8 parts in int8. On the shipped Lite0 it is the fastest CPU engine measured
(docs/performance.md, `bench/results/studies/cpu_engines.json`)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import CreamError, ModelFileError
from .manifest import MANIFEST_KEY, Manifest
from .session import checked_manifest, model_inputs

__all__ = ["PRECISIONS", "OpenVinoPredictor"]

PRECISIONS = ("f32", "bf16")  # OpenVINO's inference precision hints the engine offers


class OpenVinoPredictor:
    """`predictor(x, class_ids) -> (logits, maps)` over an export, compiled by OpenVINO for the CPU.

    Example:
        >>> predictor = OpenVinoPredictor.load("model.onnx", precision="bf16")  # doctest: +SKIP
        >>> logits, maps = predictor(batch)  # doctest: +SKIP
    """

    def __init__(self, compiled: Any, manifest: Manifest, path: str, precision: str):
        self.compiled, self.manifest, self.path, self.precision = compiled, manifest, path, precision
        self.input_size, self.mean, self.std = manifest.input_size, manifest.mean, manifest.std
        self._request = compiled.create_infer_request()
        self._outputs = [compiled.output(name) for name in manifest.outputs]

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, precision: str = "f32") -> "OpenVinoPredictor":
        """Read and compile an export made by `cream export` (its manifest checked as for ONNX
        Runtime); `threads`: inference threads (default: OpenVINO's, one per core)."""
        try:
            import openvino as ov
        except ImportError:
            raise CreamError("the openvino engine needs OpenVINO: pip install 'cream-rt[openvino]'") from None
        path = os.fspath(path)
        if precision not in PRECISIONS:
            raise CreamError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not os.path.isfile(path):
            raise ModelFileError(f"{path}: model file not found")
        core = ov.Core()
        try:
            model = core.read_model(path)
        except Exception as exc:  # not ONNX, truncated, an operator OpenVINO lacks
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise ModelFileError(f"{path}: not a model OpenVINO can read ({first})") from None
        text = model.get_rt_info(["framework", MANIFEST_KEY]).astype(str) \
            if model.has_rt_info(["framework", MANIFEST_KEY]) else None
        outputs = {o.get_any_name(): [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                   for o in model.outputs}
        manifest = checked_manifest(text, path, [i.get_any_name() for i in model.inputs], outputs)
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise CreamError("this CPU has no bf16 instructions: use the openvino engine (fp32)")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        return cls(core.compile_model(model, "CPU", config), manifest, path, precision)

    def __call__(self, x: np.ndarray, class_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """(logits `(B,C)`, maps `(B,S,S)`) of a normalised batch `x` `(B,3,S,S)`."""
        return self.run(x, class_ids)[:2]

    def run(self, x: np.ndarray, class_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(logits, maps, boxes): boxes `(B,4)` fractions from the box regressor, or None."""
        x, ids = model_inputs(x, class_ids, self.manifest)
        out = self._request.infer({"images": x, "class_ids": ids})
        values = [np.asarray(out[o]) for o in self._outputs]
        return values[0], values[1], (values[3] if self.manifest.regressor else None)

    def describe(self) -> dict:
        """The engine and the export it runs."""
        m = self.manifest
        return {"engine": "openvino", "precision": self.precision, "mode": m.mode, "iterations": m.iterations,
                "backbone": m.backbone}
