"""Empirical bias correction of an int8 export: the mean shift that int8 rounding puts on each
quantized Conv's output is measured on the calibration images and taken out of its bias
(Nagel et al. 2019, "Data-Free Quantization", section 4.2, the empirical variant).

Rounding errors are zero-mean one by one, but not after a convolution sums them with the same
weights at every pixel, and 16 inverted-residual blocks pass them on: the per-channel mean of
(int8 output - fp32 output) is a shifted feature map to the EM's cosine. The shift a Conv shows
is its own plus what it inherits from the layers before it, so the Convs are corrected one at a
time in graph order, each measured with every earlier one already corrected (correcting all at
once from one measurement counts the inherited part twice: measured, it makes the maps worse).
The fp32 means are measured once (a mean of differences is a difference of means), then one int8
pass per Conv."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cream_rt.errors import CreamError
from cream_rt.progress import progress

__all__ = ["prefix_graph", "channel_means", "conv_output_shift", "correct_biases"]

IMAGE_INPUT = "images"


def prefix_graph(proto, outputs: Sequence[str]) -> Any:
    """A ModelProto of the nodes of `proto` that `outputs` depend on, with `outputs` (float
    tensors) as its only outputs: one Conv's input is computed without the rest of the network."""
    import onnx

    all_nodes = list(proto.graph.node)
    producer = {o: k for k, n in enumerate(all_nodes) for o in n.output}
    needed, stack = set(), list(outputs)
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(i for i in all_nodes[k].input if i)
    nodes = [n for k, n in enumerate(all_nodes) if k in needed]
    read = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(
        nodes, proto.graph.name, [i for i in proto.graph.input if i.name in read],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs],
        [t for t in proto.graph.initializer if t.name in read])
    model = onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    return model


def channel_means(proto, outputs: Sequence[str], batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per channel, the mean over `batches` (images, pixels) of each float tensor `outputs` of
    the ModelProto `proto` (float64), running only the nodes they depend on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(prefix_graph(proto, outputs).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    sums = [np.zeros(0)] * len(outputs)
    count = [0] * len(outputs)
    for x in batches:
        feed = {IMAGE_INPUT: np.ascontiguousarray(x, np.float32), "class_ids": -np.ones(len(x), np.int64)}
        for k, value in enumerate(session.run(list(outputs), {i: feed[i] for i in inputs})):
            total = value.astype(np.float64).sum(axis=(0, 2, 3))
            sums[k] = total if not count[k] else sums[k] + total
            count[k] += value.shape[0] * value.shape[2] * value.shape[3]
    if not any(count):
        raise CreamError("no calibration images for the bias correction")
    return [total / n for total, n in zip(sums, count)]


def _conv_outputs(proto, convs: Sequence[str]) -> list[str]:
    """The output of each Conv node named in `convs`. Names can differ between an fp32 graph and
    its int8 one: where ONNX Runtime's quantizer drops a ReLU6 that the uint8 range does, the
    Conv writes the activation's name. Each graph's own Conv output is the pre-activation value."""
    found = {n.name: n.output[0] for n in proto.graph.node if n.op_type == "Conv" and n.name in convs}
    missing = [c for c in convs if c not in found]
    if missing:
        raise CreamError(f"no Conv node {missing[0]!r} in the graph")
    return [found[c] for c in convs]


def conv_output_shift(reference, quantized, convs: Sequence[str],
                      batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per output channel, the mean over `batches` of the int8 graph's (`quantized`) output of
    each Conv node named in `convs` minus the fp32 graph's (`reference`; same node names)."""
    fp32 = channel_means(reference, _conv_outputs(reference, convs), batches)
    int8 = channel_means(quantized, _conv_outputs(quantized, convs), batches)
    return {c: b - a for c, a, b in zip(convs, fp32, int8)}


def correct_biases(quantized, reference, convs: Sequence[str], batches: Sequence[np.ndarray]) -> dict:
    """Subtract from the bias of every Conv node named in `convs` (in the int8 QDQ ModelProto
    `quantized`, changed in place), in graph order, its output's mean shift against the fp32
    ModelProto `reference` on `batches`, measured after the earlier Convs' corrections. The bias
    is an int32 tensor read through a DequantizeLinear (step: input scale x weight scale per
    channel) or a float initializer. Returns a summary with the largest |shift| before and after."""
    from onnx import numpy_helper

    graph = quantized.graph
    order = [n.name for n in graph.node if n.name in set(convs)]
    _add_zero_biases(quantized, order)
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}
    biases: dict[str, tuple] = {}  # conv -> (bias initializer, its dequantization scale or None)
    for conv in order:
        node = by_name[conv]
        source = producer.get(node.input[2])
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in inits:
            biases[conv] = (inits[source.input[0]], numpy_helper.to_array(inits[source.input[1]]).astype(np.float64))
        elif node.input[2] in inits:
            biases[conv] = (inits[node.input[2]], None)
        else:
            raise CreamError(f"Conv {conv}: its bias is neither an initializer nor a dequantized one")
    fp32 = dict(zip(order, channel_means(reference, _conv_outputs(reference, order), batches)))
    before = dict(zip(order, channel_means(quantized, _conv_outputs(quantized, order), batches)))
    for k, conv in enumerate(progress(order, "int8 bias correction", unit="conv")):
        now = before[conv] if k == 0 else channel_means(quantized, _conv_outputs(quantized, [conv]), batches)[0]
        shift = now - fp32[conv]
        tensor, step = biases[conv]
        value = numpy_helper.to_array(tensor)
        if step is None:
            new = (value - shift).astype(value.dtype)
        else:
            moved = value.astype(np.int64) - np.rint(shift / np.broadcast_to(step, shift.shape)).astype(np.int64)
            new = np.clip(moved, np.iinfo(value.dtype).min, np.iinfo(value.dtype).max).astype(value.dtype)
        tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
    after = dict(zip(order, channel_means(quantized, _conv_outputs(quantized, order), batches)))
    largest = lambda means: round(max(float(np.abs(means[c] - fp32[c]).max()) for c in order), 5)
    return {"convs": len(order), "calibration_images": int(sum(len(x) for x in batches)),
            "max_abs_shift_before": largest(before), "max_abs_shift_after": largest(after)}


def _add_zero_biases(proto, convs: Sequence[str]) -> None:
    """Give each Conv named in `convs` that has no bias (ResNet's: BatchNorm folded with a zero
    shift) a zero one in the quantizer's form: int32 through a DequantizeLinear at input scale x
    weight scale, so that ONNX Runtime still fuses the unit into one int8 convolution (a float
    one where the Conv's input or weight is not dequantized)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    wanted = set(convs)
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if node.name in wanted and (len(node.input) < 3 or not node.input[2]):
            name = f"{node.name}_bias"
            x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
            if x_dq is None or w_dq is None or {x_dq.op_type, w_dq.op_type} != {"DequantizeLinear"}:
                channels = numpy_helper.to_array(inits[node.input[1]]).shape[0]
                graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
            else:
                w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32).reshape(-1)
                x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float32).reshape(())
                scale = (x_scale * w_scale).astype(np.float32)
                parts = [f"{name}_quantized", f"{name}_quantized_scale", f"{name}_quantized_zero_point"]
                graph.initializer.extend([numpy_helper.from_array(np.zeros(len(scale), np.int32), parts[0]),
                                          numpy_helper.from_array(scale, parts[1]),
                                          numpy_helper.from_array(np.zeros(len(scale), np.int32), parts[2])])
                nodes.append(helper.make_node("DequantizeLinear", parts, [name], name=f"{name}_DequantizeLinear",
                                              axis=0))
            if len(copy.input) < 3:
                copy.input.append(name)
            else:
                copy.input[2] = name
        nodes.append(copy)
    del graph.node[:]
    graph.node.extend(nodes)
