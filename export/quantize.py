"""An fp32 export -> the same graph with an int8 backbone (ONNX QDQ, static calibration), for
CPUs where fp32 convolutions are already at the machine's peak.

What is quantized, and why (measured in docs/performance.md, "int8"):
- the backbone only: the Conv, Relu/Clip, Add and MaxPool nodes between the image and the
  feature map. The classifier, the CAM, CREAM's EM, upsampling and minmax stay float32.
- each Conv with its activation as one unit: no Q/DQ pair on the Conv -> ReLU6 edge, so a
  Conv's output range is its activation's ([0, 6]) instead of the pre-activation range, whose
  256 levels mostly fall on values the activation discards (that edge cost 2-4 MaxBoxAccV2).
- the stem (the Convs that read the image, with their activations) stays float32: it is a few
  percent of the work, and its int8 input and output cost up to 0.7 more.
- each quantized Conv's bias corrected for the mean shift int8 puts on its output, one Conv at
  a time on the calibration images (export/bias_correction.py): the maps drift 28-40% less and
  every Lite0 suite cell comes within 0.5 MaxBoxAccV2 of fp32 (before: -1.0 on `small`).
Weights are int8 per output channel (symmetric), activations uint8 per tensor (asymmetric),
ranges from the calibration images (min-max by default). The recipe is recorded in the
manifest (`quantization`); `cream parity --reference FP32 --per-layer` shows where it drifts."""
from __future__ import annotations

import dataclasses
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

from .layer_drift import layer_name

__all__ = ["QUANTIZED_OPS", "CALIBRATION_METHODS", "SCHEMES", "calibration_batches", "split_images", "backbone_nodes",
           "quantize_export"]

QUANTIZED_OPS = ("Conv", "Relu", "Clip", "Add", "MaxPool")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
SCHEMES = ("backbone", "conv-only")
IMAGE_INPUT = "images"


def calibration_batches(images: Iterable, input_size: int, mean, std, batch_size: int = 16,
                        unreadable=None) -> Iterator[np.ndarray]:
    """Normalised float32 batches `(B,3,S,S)` of `images` (paths or RGB arrays), as the model is
    fed; with `unreadable` (an UnreadableImages), a path that cannot be decoded is left out and
    recorded there."""
    from cream_rt.preprocess import preprocess_batch

    for chunk in batches(list(images), batch_size):
        if unreadable is not None:
            chunk = [a for a in (unreadable.read(p, str(p)) for p in chunk) if a is not None]
        if chunk:
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


def backbone_nodes(graph) -> tuple[list[str], list[str]]:
    """(backbone, stem) node names of an ONNX graph: the backbone is every node of a
    QUANTIZED_OPS type whose non-constant inputs all come from the image or from other backbone
    nodes (a forward walk in the graph's topological order, stopping at the first pooling or
    reshaping op); the stem is the backbone Conv nodes that read the image, and their
    activations."""
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    reached, backbone, stem, stem_outputs = {IMAGE_INPUT}, [], [], set()
    for node in graph.node:
        inputs = [i for i in node.input if i and i not in constants]
        if node.op_type not in QUANTIZED_OPS or not inputs or not all(i in reached for i in inputs):
            continue
        backbone.append(node.name)
        reached.update(node.output)
        if (node.op_type == "Conv" and inputs == [IMAGE_INPUT]) or \
                (node.op_type in ("Relu", "Clip") and inputs[0] in stem_outputs):
            stem.append(node.name)
            stem_outputs.update(node.output)
    return backbone, stem


def dequantize_once(proto) -> list[str]:
    """Route each dequantized activation that only float ops read (the feature map: GAP, CAM,
    EM) through one Relu, in place; returns the tensors. ONNX Runtime makes one
    DequantizeLinear per reader otherwise (docs/performance.md). Only where the uint8 zero point
    is 0, so that every dequantized value is >= 0 and the Relu is exact."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    integer_ops = set(QUANTIZED_OPS) | {"QuantizeLinear", "DequantizeLinear"}
    chosen = {}
    for node in graph.node:
        users = readers.get(node.output[0], []) if node.op_type == "DequantizeLinear" else []
        if len(users) < 2 or node.input[0] in inits or any(u.op_type in integer_ops for u in users):
            continue
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else 0
        if np.all(zero == 0):
            chosen[node.name] = node.output[0]
    if not chosen:
        return []
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if node.op_type != "DequantizeLinear":
            for k, name in enumerate(copy.input):
                if name in chosen.values():
                    copy.input[k] = f"{name}_once"
        nodes.append(copy)
        if node.name in chosen:
            nodes.append(helper.make_node("Relu", [node.output[0]], [f"{node.output[0]}_once"],
                                          name=f"{node.name}_once"))
    del graph.node[:]
    graph.node.extend(nodes)
    return sorted(chosen.values())


def quantize_export(fp32_path: str | os.PathLike, out: str | os.PathLike, batches: Iterable[np.ndarray],
                    calibration: str = "minmax", scheme: str = "backbone", fp32_stem: bool = True,
                    bias_correction: bool = True) -> dict:
    """Write `out` (atomically): `fp32_path` with an int8 backbone calibrated on `batches`
    (see the module docstring), the manifest carried over with `precision = "int8"` and the
    recipe in `quantization`. Returns that recipe. `scheme="conv-only"` (Conv nodes alone,
    a Q/DQ pair on every Conv output), `fp32_stem=False` and `bias_correction=False` exist for
    the comparison in `bench/studies/int8_recipes.py`."""
    import onnx
    from onnxruntime import quantization as q

    if calibration not in CALIBRATION_METHODS:
        raise CreamError(f"int8 calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration!r}")
    source = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in source.metadata_props}
    if MANIFEST_KEY not in props:
        raise CreamError(f"{fp32_path}: no cream_rt manifest (not exported by `cream export`)")
    manifest = Manifest.from_json(props[MANIFEST_KEY], str(fp32_path))
    if manifest.fused:
        raise CreamError(f"{fp32_path}: int8 needs a standard-op export (not --fused)")
    if manifest.precision != "fp32":
        raise CreamError(f"{fp32_path}: already {manifest.precision}")
    if scheme not in SCHEMES:
        raise CreamError(f"int8 scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    backbone, stem = backbone_nodes(source.graph)
    by_name = {n.name: n for n in source.graph.node}
    if scheme == "conv-only":
        backbone = [n for n in backbone if by_name[n].op_type == "Conv"]
    stem = [n for n in stem if n in backbone] if fp32_stem else []
    if not any(name not in stem for name in backbone):
        raise CreamError(f"{fp32_path}: no backbone convolutions to quantize")
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise CreamError("no calibration images were given")
    kept = [first, *batches] if bias_correction else None  # read twice: calibration, bias correction
    if kept is not None:
        first, batches = kept[0], iter(kept[1:])
    corrected = None
    seen = {"images": 0}

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = itertools.chain([first], batches)

        def get_next(self):
            x = next(self.batches, None)
            if x is None:
                return None
            seen["images"] += len(x)
            return {IMAGE_INPUT: np.ascontiguousarray(x, np.float32), "class_ids": -np.ones(len(x), np.int64)}

    method = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
              "entropy": q.CalibrationMethod.Entropy}[calibration]
    # ORT's advice to run its shape pre-processing goes to the root logger on every call; its
    # symbolic shape inference fails on our graph (the unrolled EM), and quantization does not need it.
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8.onnx"
        try:
            q.quantize_static(str(fp32_path), str(quantized), Reader(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, op_types_to_quantize=sorted({by_name[n].op_type for n in backbone}),
                              nodes_to_quantize=backbone,
                              nodes_to_exclude=stem, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=method)
        finally:
            logging.getLogger().removeFilter(advice)
        proto = onnx.load(str(quantized))
    if kept is not None:  # with bias_correction
        from .bias_correction import correct_biases

        convs = [n for n in backbone if by_name[n].op_type == "Conv" and n not in stem]
        corrected = correct_biases(proto, source, convs, kept)
    shared = dequantize_once(proto)
    producer = {o: n for n in source.graph.node for o in n.output}
    recipe = {
        "scheme": f"qdq-{scheme}",
        "calibration": calibration,
        "calibration_images": seen["images"],
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8 asymmetric, per tensor",
        "quantized_ops": sorted({by_name[n].op_type for n in backbone if n not in stem}),
        "quantized_convs": sum(by_name[n].op_type == "Conv" for n in backbone if n not in stem),
        "fp32_convs": sum(n.op_type == "Conv" for n in source.graph.node)
        - sum(by_name[n].op_type == "Conv" for n in backbone if n not in stem),
        "fp32_stem": [layer_name(by_name[n], producer) for n in stem],
    }
    recipe["bias_correction"] = corrected or False
    recipe["dequantized_once"] = shared
    manifest = dataclasses.replace(manifest, precision="int8", quantization=recipe,
                                   versions=dict(manifest.versions, onnxruntime_quantization=_ort_version()))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, (manifest.to_json() if key == MANIFEST_KEY else value)
    onnx.checker.check_model(proto)
    with atomic_path(Path(out)) as tmp_out:
        onnx.save_model(proto, tmp_out)
    return {"model": os.fspath(out), "precision": "int8", **recipe}


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
