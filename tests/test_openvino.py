"""The OpenVINO engine: the same export, manifest and results as ONNX Runtime (fp32 within 1e-5),
from the library and from `cream localize --engine`; skipped where OpenVINO is not installed."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'cream-rt[openvino]')")
torch = pytest.importorskip("torch")

from cli_helpers import assert_one_error, run  # noqa: E402

from cream_rt.errors import CreamError, ModelFileError  # noqa: E402
from cream_rt.runtime import Localizer, OnnxPredictor  # noqa: E402
from cream_rt.session import load_predictor  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random small-cnn exported in CAM and CREAM (T=2) modes."""
    from cream_rt.export.onnx_export import export_model
    from cream_rt.model.network import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", 5, input_size=48).eval()
    with torch.no_grad():
        model.embeddings.normal_()
        model.embedding_fitted.fill_(True)
    folder = tmp_path_factory.mktemp("ov")
    paths = {mode: folder / f"{mode}.onnx" for mode in ("cam", "cream")}
    for mode, path in paths.items():
        export_model(model, path, mode, 0 if mode == "cam" else 2)
    return paths


@pytest.mark.parametrize("mode", ["cam", "cream"])
def test_openvino_fp32_equals_onnxruntime(exports, mode):
    """Logits and maps of OpenVINO's fp32 = ONNX Runtime's within 1e-5, at batch 1 and 3 (one
    compiled model, dynamic batch), for given and predicted classes."""
    reference = OnnxPredictor.load(exports[mode])
    predictor = load_predictor(exports[mode], "openvino")
    assert predictor.manifest == reference.manifest and predictor.describe()["engine"] == "openvino"
    rng = np.random.default_rng(1)
    for batch, ids in ((1, None), (3, [2, -1, 0])):
        x = rng.normal(0, 1, (batch, 3, 48, 48)).astype(np.float32)
        for got, want in zip(predictor(x, ids), reference(x, ids)):
            np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(CreamError, match=r"images must have shape \(B, 3, 48, 48\)"):
        predictor(np.zeros((1, 3, 32, 32), np.float32))


def test_localize_on_openvino_gives_the_onnxruntime_records(tiny, tmp_path):
    """`cream localize --engine openvino` = the default engine's records (classes and boxes; scores
    within 1e-5); `--json` names the engine; with --ray, one error line."""
    images = sorted((tiny["data"] / "images").rglob("*.png"))[:6]
    records = {}
    for engine in ("onnxruntime", "openvino"):
        out = tmp_path / f"{engine}.jsonl"
        result = run("localize", *images, "--model", tiny["model"], "--out", out, "--engine", engine, "--json",
                     expect=0)
        assert json.loads(result.stdout)["engine"] == engine
        records[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    for a, b in zip(records["onnxruntime"], records["openvino"]):
        assert (a["class_id"], a["boxes"]) == (b["class_id"], b["boxes"]) and abs(a["score"] - b["score"]) < 1e-5
    assert_one_error(run("localize", *images, "--model", tiny["model"], "--out", tmp_path / "r", "--engine",
                         "openvino", "--ray"), "--engine openvino goes without --ray")


def test_openvino_bad_inputs_are_one_line(exports, tmp_path):
    """A missing file, a file without a manifest, a wrong engine name, ONNX Runtime providers."""
    import onnx

    with pytest.raises(ModelFileError, match="model file not found"):
        load_predictor(tmp_path / "none.onnx", "openvino")
    bare = onnx.load(str(exports["cam"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="no cream_rt manifest"):
        load_predictor(tmp_path / "bare.onnx", "openvino")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ModelFileError, match="not a model OpenVINO can read"):
        load_predictor(tmp_path / "text.onnx", "openvino")
    with pytest.raises(CreamError, match="engine must be one of onnxruntime, openvino, openvino-bf16"):
        Localizer.load(exports["cam"], engine="tensorflow")
    with pytest.raises(CreamError, match="providers are ONNX Runtime's"):
        load_predictor(exports["cam"], "openvino", ["CPUExecutionProvider"])


def test_openvino_bf16_runs_where_the_cpu_has_it(exports):
    """bf16 where the CPU has the instructions (maps within bf16's error of fp32), else one line."""
    import openvino as ov

    x = np.random.default_rng(2).normal(0, 1, (2, 3, 48, 48)).astype(np.float32)
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(CreamError, match="no bf16 instructions"):
            load_predictor(exports["cream"], "openvino-bf16")
        return
    with Localizer.load(exports["cream"], engine="openvino-bf16") as loc:
        assert loc.predictor.describe()["precision"] == "bf16"
        maps = loc.predictor(x)[1]
    assert maps.shape == (2, 48, 48) and np.abs(maps - OnnxPredictor.load(exports["cream"])(x)[1]).max() < 0.25
