"""State that cannot drift and taps that keep their values: the EM layer is fixed when a model is
built, exports record it, VGG16's tapped convolutions are not overwritten by a later in-place
ReLU, several taps in one pass equal a float64 layer-by-layer reference, an int8 export of a
model whose EM runs on an earlier layer, and bias correction along a chain of convolutions."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
F = torch.nn.functional
from cli_helpers import run  # noqa: E402

from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.model.network import create_model  # noqa: E402


def test_em_layer_is_fixed_when_the_model_is_built():
    """The config is frozen; a changed copy that would change what the weights and buffers were
    built for (the EM layer, the classes, the input size) is refused, other changes are taken."""
    import dataclasses

    from cream_rt.errors import CreamError

    model = create_model("small-cnn", 3, input_size=32, cream=CreamConfig(em_layer="body.5")).eval()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.cream.em_layer = "cam"
    with pytest.raises(CreamError, match="cannot change cream.em_layer of a built model"):
        model.config = model.config.with_cream(em_layer="cam")
    with pytest.raises(CreamError, match="cannot change num_classes, input_size"):
        model.config = dataclasses.replace(model.config, num_classes=4, input_size=64)
    model.config = model.config.with_cream(iterations=3)
    assert model.em_layer == "body.5" and model.config.cream.iterations == 3
    assert model.with_em_layer("cam").em_layer == "cam"


def test_vgg16_tap_is_the_convolution_output_not_its_relu():
    """features.28 is conv5_3; its ReLU (features.29) must not overwrite the tapped tensor."""
    torch.manual_seed(0)
    model = create_model("vgg16", 2, input_size=32).eval()
    seen = {}
    conv = model.backbone.get_submodule("features.28")
    handle = conv.register_forward_hook(lambda m, a, out: seen.setdefault("t", out.clone()))
    try:
        with torch.no_grad():
            _, tapped = model.backbone.forward_tap(torch.randn(1, 3, 32, 32), "features.28")
    finally:
        handle.remove()
    assert (seen["t"] < 0).any()  # a conv output has negative values: a ReLU would have zeroed them
    torch.testing.assert_close(tapped, seen["t"], rtol=0, atol=0)


def _np_conv_bn_relu(x: np.ndarray, block) -> np.ndarray:
    """conv 3x3 (padding 1, the block's stride) + eval BatchNorm + ReLU in float64, by hand."""
    conv, bn = block[0], block[1]
    w = conv.weight.detach().double()
    y = F.conv2d(torch.from_numpy(x), w, None, conv.stride, 1).numpy()
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + bn.eps) * gamma[:, None, None] + beta[:, None, None]
    return np.maximum(y, 0)


def test_several_taps_in_one_pass_equal_a_float64_reference():
    """small-cnn with non-trivial BatchNorm statistics: body.4, body.5 and the output from
    `forward_taps` equal the float64 composition of its conv-BN-ReLU blocks."""
    torch.manual_seed(1)
    model = create_model("small-cnn", 2, input_size=32).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, taps = model.backbone.forward_taps(x, {"body.4", "body.5"})
    y, want = x.double().numpy(), {}
    for i, block in enumerate(model.backbone.body):
        y = _np_conv_bn_relu(y, block)
        want[f"body.{i}"] = y
    np.testing.assert_allclose(taps["body.4"].numpy(), want["body.4"], atol=1e-4)
    np.testing.assert_allclose(taps["body.5"].numpy(), want["body.5"], atol=1e-4)
    np.testing.assert_allclose(out.numpy(), want["body.6"], atol=1e-4)


def test_export_manifest_records_the_em_settings(tiny, tmp_path):
    """An export of a model fitted with the EM on body.5 records em_layer, center, the
    calibration and the (empty) fallback classes; an int8 export of it stays close to fp32."""
    fitted, fp32, int8 = tmp_path / "fit.pt", tmp_path / "m.onnx", tmp_path / "q.onnx"
    run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", fitted,
        "--em-layer", "body.5", "--center", expect=0)
    manifest = json.loads(run("export", "--checkpoint", fitted, "--out", fp32, "--json", expect=0).stdout)
    c = manifest["model"]["cream"]  # the model's config verbatim
    assert (c["em_layer"], c["center"], c["calibration"]) == ("body.5", True, "cam-mean")
    assert manifest["fallback_classes"] == [] and manifest["box_threshold"] is None
    run("export", "--checkpoint", fitted, "--out", int8, "--int8", "--calibration-data", tiny["data"], expect=0)
    from cream_rt.runtime import OnnxPredictor

    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    ids = np.array([0, 1, 2, 0])
    a, b = OnnxPredictor.load(fp32), OnnxPredictor.load(int8)
    assert b.manifest.config.cream.em_layer == "body.5" and b.manifest.precision == "int8"
    _, maps_fp32, _ = a.run(x, ids)
    _, maps_int8, _ = b.run(x, ids)
    assert np.abs(maps_fp32 - maps_int8).mean() < 0.1


def _chain(step_y: float):
    """images -> conv1 (w 1, bias 0.3) -> conv2 (w 1, bias 0) as an fp32 graph and as a QDQ graph
    whose conv1 input and conv2 input go through uint8 at steps 1 and `step_y`."""
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    b1, b2 = numpy_helper.from_array(np.array([0.3], np.float32), "b1"), numpy_helper.from_array(
        np.array([0.0], np.float32), "b2")
    io = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 1, 2, 2])]
    out = [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None, 1, 2, 2])]
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b1"], ["y1"], name="conv1"),
         helper.make_node("Conv", ["y1", "w", "b2"], ["y2"], name="conv2")], "fp32", io, out, [one, b1, b2]))
    scales = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
              numpy_helper.from_array(np.array(step_y, np.float32), "ys"),
              numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "xs", "z"], ["xq"], name="q1"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["xd"], name="dq1"),
             helper.make_node("Conv", ["xd", "w", "b1"], ["y1"], name="conv1"),
             helper.make_node("QuantizeLinear", ["y1", "ys", "z"], ["y1q"], name="q2"),
             helper.make_node("DequantizeLinear", ["y1q", "ys", "z"], ["y1d"], name="dq2"),
             helper.make_node("Conv", ["y1d", "w", "b2"], ["y2"], name="conv2")]
    int8 = helper.make_model(helper.make_graph(nodes, "int8", io, out, [one, b1, b2, *scales]))
    for m in (fp32, int8):
        m.opset_import[0].version = 17
        m.ir_version = 8
    return fp32, int8


def test_bias_correction_along_a_chain_depends_on_the_earlier_correction():
    """x = 0.4, 1.4 rounds to 0, 1: conv1's output is 0.4 low (0.3, 1.3 for 0.7, 1.7), so its
    bias becomes 0.7; then conv2's input rounds 0.7, 1.7 to 1, 2 (+0.3 against fp32) and its bias
    becomes -0.3. Measured before conv1's correction, conv2 would have seen 0, 1 (-0.7) and
    moved by +0.7: the sequential correction leaves no shift, the simultaneous one would."""
    from onnx import numpy_helper

    from cream_rt.export.bias_correction import conv_output_shift, correct_biases

    x = np.array([0.4, 1.4, 0.4, 1.4], np.float32).reshape(1, 1, 2, 2)
    fp32, int8 = _chain(1.0)
    before = conv_output_shift(fp32, int8, ["conv1", "conv2"], [x])
    # ONNX Runtime lands within 0.002 of the hand values
    np.testing.assert_allclose([before["conv1"][0], before["conv2"][0]], [-0.4, -0.7], atol=5e-3)
    correct_biases(int8, fp32, ["conv1", "conv2"], [x])
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    np.testing.assert_allclose([inits["b1"][0], inits["b2"][0]], [0.7, -0.3], atol=5e-3)
    after = conv_output_shift(fp32, int8, ["conv1", "conv2"], [x])
    np.testing.assert_allclose([after["conv1"][0], after["conv2"][0]], [0.0, 0.0], atol=5e-3)
