"""`CreamConfig.em_layer`: the EM clusters an earlier layer of the backbone while the CAM and the
classifier read its output. References: forward hooks on the named modules (independent of
`Backbone.forward_tap`) and the float64 NumPy EM of test_reactivate / test_refine."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from test_reactivate import np_reactivate  # noqa: E402
from test_refine import _np_round, _np_side_class_means  # noqa: E402

from cream_rt.config import CreamConfig, ModelConfig  # noqa: E402
from cream_rt.errors import CreamError  # noqa: E402
from cream_rt.model.network import create_model  # noqa: E402


def _hooked(model, layer: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(the backbone's output, the output of module `layer`) with a forward hook."""
    seen = {}
    handle = model.backbone.get_submodule(layer).register_forward_hook(lambda m, a, out: seen.setdefault("t", out))
    try:
        with torch.no_grad():
            out = model.backbone(x)
    finally:
        handle.remove()
    return out.numpy(), seen["t"].numpy()


@pytest.mark.parametrize("backbone,size,layer", [("small-cnn", 32, "body.5"), ("efficientnet-lite0", 64, "_blocks.7"),
                                                 ("resnet50", 64, "layer3")])
def test_forward_tap_is_the_named_module_output(backbone, size, layer):
    torch.manual_seed(0)
    model = create_model(backbone, 3, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    want_out, want_tap = _hooked(model, layer, x)
    with torch.no_grad():
        out, tap = model.backbone.forward_tap(x, layer)
    np.testing.assert_array_equal(out.numpy(), want_out)
    np.testing.assert_array_equal(tap.numpy(), want_tap)


def _em_model(unit: bool = True, center: bool = True):
    torch.manual_seed(3)
    model = create_model("small-cnn", 4, input_size=32, cream=CreamConfig(em_layer="body.5", center=center,
                         feature_mean="unit" if unit else "raw")).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    return model


@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_em_layer_maps_match_the_float64_reference(unit):
    """The CAM from the backbone's output, the EM (centered) on body.5's: eager and the fused op
    equal the float64 reference; the classifier's logits are those of the output alone."""
    model = _em_model(unit)
    assert model.embeddings.shape == (4, 2, 128) and model.config.cream.em_layer == "body.5"
    x = torch.randn(5, 3, 32, 32)
    ids = torch.tensor([0, 3, 1, 2, 0])
    out, tap = _hooked(model, "body.5", x)
    model.feature_center.copy_(torch.from_numpy(tap).mean((0, 2, 3)))  # as a pass would: z well spread
    weight = model.classifier.weight.detach().numpy().astype(np.float64)
    cam = np.einsum("bk,bkhw->bhw", weight[ids.numpy()], out.astype(np.float64))
    want = np_reactivate(tap, cam, model.embeddings[ids].numpy(), 2, 8.0, 0.2, unit, calibration="cam-mean",
                         center=model.feature_center.numpy())
    with torch.no_grad():
        features = model.features(x)
        assert features.shape[1] == 128 + 128
        logits = model.logits(features).numpy()
        for fused in (False, True):
            got = model.maps_from_features(features, ids, fused=fused).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
    want_logits = out.mean((2, 3)) @ weight.T + model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)


def test_embedding_pass_on_the_em_layer_matches_its_definition():
    """The center and the class means are taken of the EM layer's features."""
    from cream_rt.train.refine import embedding_pass

    model = _em_model()
    before = model.embeddings.clone().numpy()
    x = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    out, tap = _hooked(model, "body.5", x)
    weight = model.classifier.weight.detach().numpy().astype(np.float64)
    cams = np.einsum("bk,bkhw->bhw", weight[labels.numpy()], out.astype(np.float64))
    k = tap.shape[1]
    center = tap.astype(np.float64).transpose(1, 0, 2, 3).reshape(k, -1).mean(1)
    cam_n = np.stack([(c - c.min()) / (c.max() - c.min()) for c in cams.reshape(8, -1)])
    means = _np_side_class_means(tap, (cam_n >= 0.2).astype(np.float64), labels.numpy(), before, True, center)
    want = _np_round(tap, cams, labels.numpy(), means.astype(np.float32), True, center)
    embedding_pass(model, lambda: [(x[:5], labels[:5]), (x[5:], labels[5:])], True, 1)
    np.testing.assert_allclose(model.feature_center.numpy(), center, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.embeddings.numpy(), want, atol=1e-5)


def test_em_layer_export_matches_eager(tmp_path):
    from test_export_runtime import _compare

    from cream_rt.export.onnx_export import export_model

    torch.manual_seed(0)
    model = create_model("efficientnet-lite0", 5, input_size=64, cream=CreamConfig(em_layer="_blocks.7")).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    model.feature_center.copy_(torch.rand_like(model.feature_center) * 0.1)
    export_model(model, tmp_path / "m.onnx")
    _compare(model, tmp_path / "m.onnx")
    export_model(model, tmp_path / "cam.onnx", mode="cam")  # the CAM needs no tap: no Concat, no Slice
    ops = {n.op_type for n in onnx.load(tmp_path / "cam.onnx").graph.node}
    assert not ops & {"Concat", "Slice"}, ops & {"Concat", "Slice"}
    assert "Concat" in {n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node}


def test_em_layer_is_validated_and_older_configs_cluster_the_cam_features():
    with pytest.raises(CreamError, match="not a layer of small-cnn.*body.0"):
        create_model("small-cnn", 3, input_size=32, cream=CreamConfig(em_layer="nope"))
    with pytest.raises(CreamError, match="body.1.*16x16 cells.*4x4; expected a layer at the CAM's resolution"):
        create_model("small-cnn", 3, input_size=32, cream=CreamConfig(em_layer="body.1"))
    with pytest.raises(ValueError, match="em_layer must be"):
        CreamConfig(em_layer="")
    saved = ModelConfig().to_dict()
    del saved["cream"]["em_layer"]
    assert ModelConfig.from_dict(saved, 1).cream.em_layer == "cam"  # a version-1 file without the field
    model = create_model("small-cnn", 3, input_size=32)
    assert model.config.cream.em_layer == "cam" and model.embeddings.shape == (3, 2, 128)
    assert ModelConfig.from_dict(model.config.to_dict()).cream.em_layer == "cam"


def test_fit_embeddings_moves_the_em_to_another_layer(tiny, tmp_path):
    """`cream fit-embeddings --em-layer`: same network, embeddings and center of the new layer,
    and its maps differ; a bad layer is one error line and no file."""
    from cli_helpers import run

    from cream_rt.model.checkpoint import load_checkpoint

    out = tmp_path / "tap.pt"
    run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out,
        "--em-layer", "body.5", "--json", expect=0)
    model, _ = load_checkpoint(out)
    original, _ = load_checkpoint(tiny["ckpt"])
    assert model.config.cream.em_layer == "body.5" and model.embeddings.shape[-1] == 128
    for name, value in original.state_dict().items():
        if name not in ("embeddings", "feature_center"):
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    size = model.config.input_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert (model(x)[1] - original(x)[1]).abs().max() > 1e-3
    centered = tmp_path / "centered.pt"  # back to the backbone's default layer: its default center (off)
    run("fit-embeddings", "--checkpoint", out, "--data", tiny["data"], "--out", centered, "--center", expect=0)
    assert load_checkpoint(centered)[0].config.cream.center is True
    run("fit-embeddings", "--checkpoint", centered, "--data", tiny["data"], "--out", tmp_path / "back.pt",
        "--em-layer", "cam", expect=0)
    back, _ = load_checkpoint(tmp_path / "back.pt")
    assert back.config.cream.em_layer == "cam" and back.config.cream.center is False
    result = run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", tmp_path / "bad.pt",
                 "--em-layer", "body.99", expect=2)
    assert "body.99" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.pt").exists()
    result = run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", tmp_path / "bad.pt",
                 "--em-layer", "body.5", "--estimate", "momentum", "--refine", "1", expect=2)
    assert "another layer" in result.stderr and not (tmp_path / "bad.pt").exists()


def test_backbones_lists_layers_and_defaults():
    from cli_helpers import run

    rows = json.loads(run("backbones", "--layers", "small-cnn", "--json", expect=0).stdout)
    assert [r["layer"] for r in rows] == [f"body.{i}" for i in range(7)]
    assert [r["em_layer"] for r in rows] == [False] * 3 + [True] * 4  # the CAM's grid, or one stride step finer
    listing = json.loads(run("backbones", "--json", expect=0).stdout)
    assert listing["small-cnn"]["wsol_layout"]["em_layer"] == "cam" and "stock_strides" not in listing["small-cnn"]
    assert listing["efficientnet-lite1"]["stock_strides"]["em_layer"] == "stage5.last"
    run("backbones", "--layers", "nope", expect=2)


def test_train_with_em_layer_reaches_export(tiny, tmp_path):
    """`cream train --em-layer`: the momentum rule and the pass run on that layer, the export
    equals eager; a layer at another resolution is one error line and no file."""
    from cli_helpers import run
    from test_export_runtime import _compare

    from cream_rt.model.checkpoint import load_checkpoint

    out = tmp_path / "m.pt"
    run("train", "--data", tiny["data"], "--out", out, "--epochs", "1", "--batch-size", "8", "--bn-batches", "1",
        "--input-size", "64", "--em-layer", "body.5", expect=0)
    model, payload = load_checkpoint(out)
    assert model.config.cream.em_layer == "body.5" and model.embeddings.shape == (3, 2, 128)
    assert payload["training"]["history"][-1]["embedding_pass"]["refine_rounds"] == 1
    run("export", "--checkpoint", out, "--out", tmp_path / "m.onnx", expect=0)
    _compare(model, tmp_path / "m.onnx")
    result = run("train", "--data", tiny["data"], "--out", tmp_path / "bad.pt", "--epochs", "1",
                 "--input-size", "64", "--em-layer", "body.1", expect=2)
    assert "expected a layer at the CAM's resolution" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.pt").exists()
