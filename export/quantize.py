"""An fp32 export -> the same graph with int8 convolutions (ONNX QDQ, static calibration), for
CPUs where fp32 convolutions are already at the machine's peak. Only Conv nodes are quantized
(weights per output channel, activations per tensor): the classifier, the CAM, CREAM's EM,
upsampling and minmax stay float32 on dequantized features. The maps then differ from the
fp32 model's; `cream parity` measures by how much."""
from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cream_rt.atomic import atomic_path
from cream_rt.errors import CreamError
from cream_rt.manifest import MANIFEST_KEY, Manifest
from cream_rt.scoring import batches

__all__ = ["QUANTIZED_OPS", "calibration_batches", "split_images", "quantize_export"]

QUANTIZED_OPS = ("Conv",)


def calibration_batches(images: Iterable, input_size: int, mean, std, batch_size: int = 16) -> Iterator[np.ndarray]:
    """Normalised float32 batches `(B,3,S,S)` of `images` (paths or RGB arrays), as the model is fed."""
    from cream_rt.preprocess import preprocess_batch

    for chunk in batches(list(images), batch_size):
        yield preprocess_batch(chunk, input_size, mean, std)


def split_images(split_dir: Path, image_root: Path, count: int) -> list[Path]:
    """`count` image paths of a wsolevaluation split folder, every k-th id so that they spread
    over the split (ids are usually grouped by class)."""
    from cream_rt.metadata import read_split

    ids = read_split(split_dir, require_localization=False).image_ids
    if not ids:
        raise CreamError(f"{split_dir}: no images to calibrate on")
    step = max(1, len(ids) // max(count, 1))
    return [image_root / i for i in ids[::step][:count]]


def quantize_export(fp32_path: str | os.PathLike, out: str | os.PathLike, batches: Iterable[np.ndarray]) -> dict:
    """Write `out` (atomically): `fp32_path` with int8 QDQ convolutions calibrated on `batches`
    (min-max ranges), the manifest carried over with `precision = "int8"`. Returns a report."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in source.metadata_props}
    if MANIFEST_KEY not in props:
        raise CreamError(f"{fp32_path}: no cream_rt manifest (not exported by `cream export`)")
    manifest = Manifest.from_json(props[MANIFEST_KEY], str(fp32_path))
    if manifest.fused:
        raise CreamError(f"{fp32_path}: int8 needs a standard-op export (not --fused)")
    if manifest.precision != "fp32":
        raise CreamError(f"{fp32_path}: already {manifest.precision}")
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise CreamError("no calibration images were given")
    seen = {"images": 0}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = itertools.chain([first], batches)

        def get_next(self):
            x = next(self.batches, None)
            if x is None:
                return None
            seen["images"] += len(x)
            return {"images": np.ascontiguousarray(x, np.float32), "class_ids": -np.ones(len(x), np.int64)}

    # ORT's advice to run its shape pre-processing goes to the root logger on every call; its
    # symbolic shape inference fails on our graph (the unrolled EM), and quantization does not need it.
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8.onnx"
        try:
            quantize_static(str(fp32_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=list(QUANTIZED_OPS), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().removeFilter(advice)
        proto = onnx.load(str(quantized))
    manifest.precision = "int8"
    manifest.versions = dict(manifest.versions, onnxruntime_quantization=_ort_version())
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, (manifest.to_json() if key == MANIFEST_KEY else value)
    onnx.checker.check_model(proto)
    with atomic_path(Path(out)) as tmp_out:
        onnx.save_model(proto, tmp_out)
    convs = sum(n.op_type == "Conv" for n in source.graph.node)
    return {"model": os.fspath(out), "precision": "int8", "quantized_convs": convs,
            "calibration_images": seen["images"], "quantized_ops": list(QUANTIZED_OPS)}


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
