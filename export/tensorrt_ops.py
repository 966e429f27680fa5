"""The ONNX operators TensorRT's ONNX parser supports, for the static check that every node of
both exports (standard ops, and --fused with its cream::CosineEM plugin node) will parse.

Source: onnx/onnx-tensorrt, docs/operators.md at commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc
(the TensorRT 8.5 support matrix, opset <= 17; operators marked "Y"), plus Resize mode "cubic",
which TensorRT added in 8.6 (nvinfer1::InterpolationMode::kCUBIC, with half-pixel coordinates
and setCubicCoeff(-0.75) matching PyTorch's bicubic). TensorRT 10 parses opsets up to 20+; the
list is a floor, not a ceiling. Not verified against a real TensorRT here (none installable)."""
from __future__ import annotations

SOURCE = "onnx/onnx-tensorrt docs/operators.md @ 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc (+ cubic Resize, TRT >= 8.6)"

SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid
Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_COORDINATES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                "align_corners"})


def unsupported_nodes(model) -> list[str]:
    """Nodes of an ONNX ModelProto that TensorRT's parser would reject: '<op_type> (<why>)'.
    A cream::CosineEM node passes when it names its plugin (plugin_namespace/plugin_version)."""
    from onnx import helper

    problems = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            if node.op_type == "CosineEM" and attrs.get("plugin_namespace") == b"cream" and "plugin_version" in attrs:
                continue
            problems.append(f"{node.domain}::{node.op_type} (custom op without a TensorRT plugin)")
        elif node.op_type not in SUPPORTED:
            problems.append(f"{node.op_type} (not in the TensorRT ONNX parser's operator list)")
        elif node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest").decode()
            coords = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in RESIZE_MODES or coords not in RESIZE_COORDINATES:
                problems.append(f"Resize (mode {mode!r}, coordinates {coords!r})")
    return problems
