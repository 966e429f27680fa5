"""Where an int8 export drifts from its fp32 source: every activation the int8 graph
quantizes, compared on the same images with the fp32 graph's tensor of the same name
(`cream parity --per-layer`). Needs the `onnx` package ([export] extra)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cream_rt.errors import CreamError

__all__ = ["QuantizedTensor", "quantized_tensors", "layer_name", "session_with_outputs", "layer_drift", "format_drift"]

UINT8_MAX = 255


@dataclass(frozen=True)
class QuantizedTensor:
    """A float tensor of the int8 graph that passes through QuantizeLinear -> DequantizeLinear."""

    name: str  # the float tensor (same name in the fp32 graph)
    dequantized: str  # the DequantizeLinear output the consumers read
    scale: float
    zero_point: int
    layer: str  # what produces it: a Conv's module path, else "<op> <node>"


def quantized_tensors(proto) -> list[QuantizedTensor]:
    """The quantized activations of an int8 QDQ graph in graph order (weights excluded)."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    dequantizer = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.output[0] not in dequantizer:
            continue
        scale = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
        zero = int(numpy_helper.to_array(inits[node.input[2]]).reshape(-1)[0]) if len(node.input) > 2 else 0
        found.append(QuantizedTensor(node.input[0], dequantizer[node.output[0]].output[0], scale, zero,
                                     layer_name(producer.get(node.input[0]), producer)))
    return found


def layer_name(source, producer: dict) -> str:
    """A Conv's module path (from its weight's name); an activation named after the Conv it follows."""
    if source is None:
        return "graph input"
    if source.op_type in ("Relu", "Clip") and producer.get(source.input[0]) is not None \
            and producer[source.input[0]].op_type == "Conv":
        return layer_name(producer[source.input[0]], producer) + f" + {source.op_type}"
    if source.op_type == "Conv" and len(source.input) > 1:
        weight = producer.get(source.input[1])  # the weight's DequantizeLinear, or the fp32 initializer
        name = weight.input[0].removesuffix("_quantized") if weight is not None else source.input[1]
        return name.removesuffix(".weight").removeprefix("model.")
    return f"{source.op_type} {source.name}"


def session_with_outputs(proto, names: list[str]) -> Any:
    """An ONNX Runtime session (1 thread per core) of `proto` with `names` added as graph outputs."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])


def layer_drift(reference: str, model: str, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Compare the int8 `model` with its fp32 `reference` export on `batches` of (images, class ids).

    Returns `{"layers": [...], "outputs": {...}}`. Per quantized tensor, in graph order:
    `drift` = ||int8 - fp32|| / ||fp32|| of the dequantized tensor against the fp32 graph's
    (error accumulated up to here); `rounding` = the error this quantizer adds on its own input
    in the int8 run (against the input clamped to the quantizer's range, which is also what a
    fused ReLU/ReLU6 does); `saturated` = the share of the fp32 graph's values outside that
    range (a calibration range too narrow). `outputs`: the drift of `logits` and `maps`."""
    import onnx

    ref_proto, q_proto = onnx.load(reference), onnx.load(model)
    points = quantized_tensors(q_proto)
    if not points:
        raise CreamError(f"{model}: no quantized activations (not an int8 export)")
    ref_names = {o for n in ref_proto.graph.node for o in n.output} | {i.name for i in ref_proto.graph.input}
    missing = [p.name for p in points if p.name not in ref_names]
    if missing:
        raise CreamError(f"{reference}: has no tensor {missing[0]!r} of {model}; give the fp32 export the int8 "
                         f"file was quantized from")
    ref = session_with_outputs(ref_proto, [p.name for p in points])
    q = session_with_outputs(q_proto, [p.name for p in points] + [p.dequantized for p in points])
    ref_out, q_out = [o.name for o in ref.get_outputs()], [o.name for o in q.get_outputs()]
    sums = {p.name: np.zeros(5) for p in points}  # |dq - ref|^2, |ref|^2, |dq - clamp|^2, |clamp|^2, saturated
    counts = dict.fromkeys(sums, 0)
    final = {k: np.zeros(2) for k in ("logits", "maps")}
    for x, ids in batches:
        feed = {"images": x, "class_ids": ids}
        a = dict(zip(ref_out, ref.run(None, feed)))
        b = dict(zip(q_out, q.run(None, feed)))
        for p in points:
            fp32, raw, dq = (a[p.name].astype(np.float64), b[p.name].astype(np.float64),
                             b[p.dequantized].astype(np.float64))
            lo, hi = (0 - p.zero_point) * p.scale, (UINT8_MAX - p.zero_point) * p.scale
            clamped = np.clip(raw, lo, hi)
            saturated = ((fp32 > hi + p.scale / 2) | (fp32 < lo - p.scale / 2)).sum()
            sums[p.name] += [((dq - fp32) ** 2).sum(), (fp32 ** 2).sum(), ((dq - clamped) ** 2).sum(),
                             (clamped ** 2).sum(), saturated]
            counts[p.name] += raw.size
        for k in final:
            final[k] += [((b[k].astype(np.float64) - a[k]) ** 2).sum(), (a[k].astype(np.float64) ** 2).sum()]
    ratio = lambda num, den: float(np.sqrt(num / den)) if den > 0 else 0.0
    layers = [{"tensor": p.name, "layer": p.layer, "scale": p.scale, "zero_point": p.zero_point,
               "drift": ratio(*sums[p.name][:2]), "rounding": ratio(*sums[p.name][2:4]),
               "saturated": float(sums[p.name][4] / max(counts[p.name], 1))} for p in points]
    return {"layers": layers, "outputs": {k: ratio(*v) for k, v in final.items()}}


def format_drift(report: dict, top: int = 5) -> str:
    """The per-layer report as text: every quantized tensor in graph order, then the tensors
    with the largest rounding error and saturation (the ones to look at first)."""
    rows = report["layers"]
    width = max(len(r["layer"]) for r in rows)
    lines = [f"{'layer':{width}}  {'tensor':24}  drift   rounding  saturated  range"]
    for r in rows:
        lo, hi = -r["zero_point"] * r["scale"], (UINT8_MAX - r["zero_point"]) * r["scale"]
        lines.append(f"{r['layer']:{width}}  {r['tensor'][:24]:24}  {r['drift']:.4f}  {r['rounding']:.4f}    "
                     f"{r['saturated']:.4f}     [{lo:.3g}, {hi:.3g}]")
    lines.append("final outputs, drift: " + ", ".join(f"{k} {v:.4f}" for k, v in report["outputs"].items()))
    worst = sorted(rows, key=lambda r: -r["rounding"])[:top]
    lines.append("largest rounding error: " + ", ".join(f"{r['layer']} ({r['rounding']:.4f})" for r in worst))
    saturated = [r for r in sorted(rows, key=lambda r: -r["saturated"]) if r["saturated"] > 0][:top]
    if saturated:
        lines.append("saturated: " + ", ".join(f"{r['layer']} ({100 * r['saturated']:.2f}%)" for r in saturated))
    return "\n".join(lines)
