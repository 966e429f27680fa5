"""TensorRT: the static check that every node of both exports is in the TensorRT ONNX parser's
operator list (export/tensorrt_ops.py, with its source), the clean error where TensorRT is
missing, and engine build + parity where TensorRT and a GPU exist (skipped otherwise)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from cream_rt.cli import main  # noqa: E402
from cream_rt.export.onnx_export import export_model  # noqa: E402
from cream_rt.export.tensorrt_ops import unsupported_nodes  # noqa: E402
from cream_rt.model.network import create_model  # noqa: E402


def _model(backbone="small-cnn", size=48):
    torch.manual_seed(0)
    return create_model(backbone, 4, input_size=size).eval()


@pytest.mark.parametrize("backbone", ["small-cnn", "resnet50", "efficientnet-lite0"])
@pytest.mark.parametrize("fused", [False, True])
def test_every_node_parses_in_tensorrt(backbone, fused, tmp_path):
    if fused:
        pytest.importorskip("onnxscript")
    export_model(_model(backbone, 64), tmp_path / "m.onnx", fused=fused)
    proto = onnx.load(tmp_path / "m.onnx")
    assert unsupported_nodes(proto) == []
    if fused:
        assert sum(n.op_type == "CosineEM" for n in proto.graph.node) == 1


def test_static_check_catches_unsupported_nodes():
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Unique", ["x"], ["y"]),
                               helper.make_node("Resize", ["x"], ["z"], mode="cubic",
                                                coordinate_transformation_mode="tf_crop_and_resize"),
                               helper.make_node("Foo", ["x"], ["w"], domain="custom")], "g", [], [])
    problems = unsupported_nodes(helper.make_model(graph))
    assert len(problems) == 3 and "Unique" in problems[0] and "tf_crop_and_resize" in problems[1]


def _have_tensorrt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"TensorRT is not importable ({exc.__class__.__name__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_export_trt_without_tensorrt_is_a_clean_error(tmp_path, capsys):
    if _have_tensorrt() is None:
        pytest.skip("TensorRT is installed here: the missing-TensorRT path cannot be exercised")
    from cream_rt.model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", _model())
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out), "--trt",
                 str(tmp_path / "m.engine")]) == 2
    assert "TensorRT is not importable" in capsys.readouterr().err and not out.exists()


@pytest.mark.tensorrt
@pytest.mark.parametrize("fused", [False, True])
def test_tensorrt_engine_matches_eager(fused, tmp_path):
    reason = _have_tensorrt()
    if reason:
        pytest.skip(reason)
    from cream_rt.export.tensorrt_build import TensorRTPredictor, build_engine

    model = _model("small-cnn", 64).cuda()
    export_model(model.cpu(), tmp_path / "m.onnx", fused=fused)
    build_engine(str(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), batch=(1, 4, 8))
    predictor = TensorRTPredictor(str(tmp_path / "m.engine"), 4, 64)
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    logits, maps = predictor(x, np.array([-1, 1, 2]))
    with torch.no_grad():
        le, me, _ = model.cpu()(torch.from_numpy(x), torch.tensor([-1, 1, 2]))
    np.testing.assert_allclose(maps, me.numpy(), atol=1e-3)
    np.testing.assert_allclose(logits, le.numpy(), atol=1e-3, rtol=1e-3)
