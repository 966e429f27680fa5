"""The classifier the user has, as it is: stock strides with the EM on a finer layer (the CAM
resized onto its grid, the logits unchanged), places named by stage, one image frame for every
door (EXIF orientation), and the box threshold an untuned model uses. References: torch's own
`interpolate`, OpenCV's bilinear resize, forward hooks and the float64 NumPy EM of
test_reactivate; EXIF tags written by PIL."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
from cli_helpers import run  # noqa: E402
from test_em_layer import _hooked  # noqa: E402
from test_reactivate import np_reactivate  # noqa: E402

from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.errors import CreamError  # noqa: E402
from cream_rt.model.em import bilinear_matrix, grid_mean_weights, score_maps, to_grid  # noqa: E402
from cream_rt.model.network import coarse_grid, create_model  # noqa: E402


@pytest.mark.parametrize("out_size,in_size", [(14, 7), (15, 8), (17, 9), (5, 5), (6, 3)])
def test_bilinear_matrix_is_torch_interpolate(out_size, in_size):
    v = torch.randn(3, 1, in_size, 1, dtype=torch.float64)
    want = torch.nn.functional.interpolate(v, size=(out_size, 1), mode="bilinear", align_corners=False)
    got = np.einsum("oi,bi->bo", bilinear_matrix(out_size, in_size), v.reshape(3, in_size).numpy())
    np.testing.assert_allclose(got, want.reshape(3, out_size).numpy(), atol=1e-12)


@pytest.mark.parametrize("size,grid", [((14, 14), (7, 7)), ((15, 15), (8, 8)), ((17, 15), (9, 8))])
def test_grid_mean_weights_give_the_original_mean(size, grid):
    f = torch.randn(4, 6, *grid, dtype=torch.float64)
    resized = torch.nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False)
    pooled = resized.flatten(2) @ grid_mean_weights(size, grid).double()
    np.testing.assert_allclose(pooled.numpy(), f.mean((2, 3)).numpy(), atol=1e-6)


def _stock_lite(layer: str = "stage5.last", size: int = 96, center: bool = True):
    torch.manual_seed(0)
    model = create_model("efficientnet-lite0", 5, input_size=size, stock_strides=True,
                         cream=CreamConfig(em_layer=layer, center=center, iterations=2)).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings) - 0.3)
    return model


def test_stage_places_resolve_per_variant():
    """`stage5.last` is the last block of the 112-channel stage in each variant (its depth scales)."""
    for name, want in (("efficientnet-lite0", "_blocks.10"), ("efficientnet-lite1", "_blocks.14"),
                       ("efficientnet-lite2", "_blocks.14")):
        model = create_model(name, 3, stock_strides=True, cream=CreamConfig(em_layer="stage5.last"))
        assert model.em_layer == want and model.config.cream.em_layer == want
        assert model.backbone.get_submodule(want)._project_conv.out_channels == (120 if name.endswith("2") else 112)
        assert model.em_grid != model.cam_grid and coarse_grid(model.em_grid) == model.cam_grid  # stride 16 vs 32
    with pytest.raises(CreamError, match="stages 1..7"):
        create_model("efficientnet-lite0", 3, cream=CreamConfig(em_layer="stage9.last"))
    with pytest.raises(CreamError, match="no stages by name"):
        create_model("small-cnn", 3, cream=CreamConfig(em_layer="stage1.first"))


def test_finer_em_layer_matches_the_float64_reference():
    """Stock Lite0 at 96 px: a 3x3 CAM, the EM on the 6x6 stride-16 layer. The maps are the float64
    EM on the hooked layer with the CAM resized by OpenCV (bilinear, half-pixel centers); the
    logits are the stock network's (GAP of the 3x3 map), eager and fused."""
    model = _stock_lite()
    x = torch.randn(3, 3, 96, 96)
    ids = torch.tensor([0, 4, 2])
    out, tap = _hooked(model, model.em_layer, x)
    assert out.shape[-2:] == (3, 3) and tap.shape[-2:] == (6, 6)
    model.feature_center.copy_(torch.from_numpy(tap).mean((0, 2, 3)))
    weight = model.classifier.weight.detach().numpy().astype(np.float64)
    cam = np.einsum("bk,bkhw->bhw", weight[ids.numpy()], out.astype(np.float64))
    cam_up = np.stack([cv2.resize(c, (6, 6), interpolation=cv2.INTER_LINEAR) for c in cam])
    want = np_reactivate(tap, cam_up, model.embeddings[ids].numpy(), 2, 8.0, 0.2, True, calibration="cam-mean",
                         center=model.feature_center.numpy())
    with torch.no_grad():
        features = model.features(x)
        logits = model.logits(features).numpy()
        for fused in (False, True):
            np.testing.assert_allclose(model.maps_from_features(features, ids, fused=fused).numpy(), want,
                                       atol=1e-5)
        cam_only = model.logits(model.features(x, with_em=False)).numpy()
        for fused in (False, True):  # forward resizes the one-channel CAM instead of its features
            forward_logits, forward_maps, _ = model(x, ids, fused=fused)
            np.testing.assert_allclose(forward_maps.numpy(), score_maps(torch.from_numpy(want).float(),
                                                                        (96, 96)).numpy(), atol=1e-5)
            np.testing.assert_allclose(forward_logits.numpy(), logits, atol=1e-5)
    want_logits = out.astype(np.float64).mean((2, 3)) @ weight.T + model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)
    np.testing.assert_allclose(cam_only, want_logits, atol=1e-5)


def test_finer_em_layer_exports_like_eager(tmp_path):
    """The ONNX graph (a Resize of the CAM's features, the weighted pooling) = eager, batch dynamic."""
    ort = pytest.importorskip("onnxruntime")
    from cream_rt.export.onnx_export import export_model

    model = _stock_lite(size=96)
    path = tmp_path / "m.onnx"
    export_model(model, path)
    x = torch.randn(3, 3, 96, 96)
    ids = torch.tensor([1, -1, 3])
    with torch.no_grad():
        logits, maps, _ = model(x, ids)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy(), "class_ids": ids.numpy()})
    np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], maps.numpy(), atol=1e-5)


def test_to_grid_keeps_a_grid_that_matches():
    x = torch.randn(2, 4, 5)
    assert to_grid(x, (4, 5)) is x


def _exif_jpeg(source, target, orientation: int | None) -> None:
    """`source` re-encoded as a 64x48 JPEG, with the EXIF orientation tag where given."""
    from PIL import Image

    image = Image.open(source).convert("RGB").resize((64, 48))
    target.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        image.save(target, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(target, quality=95, exif=exif.tobytes())


def _jpeg_copy(tiny: dict, root, orientation: int | None):
    """The tiny data set with every test image as a JPEG (EXIF-tagged where `orientation`)."""
    shutil.copytree(tiny["data"] / "metadata", root / "metadata")
    for split in ("test",):
        folder = root / "metadata" / split
        ids = (folder / "image_ids.txt").read_text().split()
        for i in ids:
            _exif_jpeg(tiny["data"] / "images" / i, root / "images" / i.replace(".png", ".jpg"), orientation)
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            path = folder / name
            if not path.is_file():
                continue
            text = path.read_text().replace(".png", ".jpg")
            if name == "image_sizes.txt":
                text = "\n".join(f"{line.split(',')[0]},64,48" for line in text.splitlines() if line) + "\n"
            if name == "localization.txt":  # the boxes scaled to the 64x48 JPEGs
                rows = []
                for line in text.splitlines():
                    image_id, *box = line.split(",")
                    x0, y0, x1, y1 = (float(v) for v in box)
                    rows.append(f"{image_id},{x0},{y0 * 0.75:.2f},{x1},{y1 * 0.75:.2f}")
                text = "\n".join(rows) + "\n"
            path.write_text(text)
    return root


def test_an_exif_tagged_photo_scores_as_the_untagged_one(tiny, tmp_path):
    """wsolevaluation reads pixels as stored: a copy whose EXIF tag says "rotate 90" scores exactly
    as the untagged copy in `cream eval` (the export and the checkpoint)."""
    plain = _jpeg_copy(tiny, tmp_path / "plain", None)
    tagged = _jpeg_copy(tiny, tmp_path / "tagged", 6)
    for model in (["--model", tiny["model"]], ["--checkpoint", tiny["ckpt"]]):
        scores = [json.loads(run("eval", *model, "--data", root, "--split", "test", "--json", expect=0).stdout)
                  for root in (plain, tagged)]
        for key in ("MaxBoxAccV2", "GT_known_Loc", "Top1_Loc", "classification_top1"):
            if key in scores[0]:
                assert scores[0][key] == scores[1][key], key


def test_every_door_gives_one_frame(tiny, tmp_path):
    """A path, its bytes, its PIL image and its array give the same class and boxes (the pixels
    as stored); with exif_orientation the tag is applied to paths, bytes and PIL images alike,
    and the boxes are in the displayed (rotated) frame."""
    from PIL import Image

    from cream_rt.runtime import Localizer

    path = tmp_path / "photo.jpg"
    source = tiny["data"] / "images" / (tiny["data"] / "metadata" / "test" / "image_ids.txt").read_text().split()[0]
    _exif_jpeg(source, path, 6)
    with Localizer.load(tiny["model"], threshold=0.3) as loc:
        doors = [str(path), path.read_bytes(), Image.open(path), np.asarray(Image.open(path).convert("RGB"))]
        results = [loc(door)[0] for door in doors]
    assert {r.image_size for r in results} == {(64, 48)}
    assert all(r.class_id == results[0].class_id and r.boxes == results[0].boxes for r in results)
    with Localizer.load(tiny["model"], threshold=0.3, exif_orientation=True) as loc:
        shown = [loc(door)[0] for door in doors[:3]]
    assert {r.image_size for r in shown} == {(48, 64)}  # orientation 6: displayed rotated by 90 degrees
    assert all(r.class_id == shown[0].class_id and r.boxes == shown[0].boxes for r in shown)
    out = tmp_path / "r.jsonl"
    run("localize", path, "--model", tiny["model"], "--out", out, "--exif-orientation", expect=0)
    assert json.loads(out.read_text())["image_size"] == [48, 64]


def test_untuned_threshold_comes_from_the_backbone_or_is_announced(tiny, tmp_path, monkeypatch):
    """A tuned threshold wins; else the backbone's shipped one for the export's mode; a model with
    neither (small-cnn has none) uses 0.2 and `cream localize` says so in one warning line."""
    import dataclasses

    from cream_rt.model import backbones
    from cream_rt.runtime import Localizer

    image = tiny["data"] / "images" / (tiny["data"] / "metadata" / "test" / "image_ids.txt").read_text().split()[0]
    out = tmp_path / "r.jsonl"
    result = run("localize", image, "--model", tiny["model"], "--out", out, "--json", expect=0)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("cream: warning:") and "no tuned or shipped" in warnings[0]
    summary = json.loads(result.stdout)  # --json: one object
    assert (summary["localized"], summary["threshold"], summary["threshold_source"]) == (1, 0.2, "fallback")
    with Localizer.load(tiny["model"]) as loc:
        assert (loc.threshold, loc.threshold_source) == (0.2, "fallback")
    spec = backbones.REGISTRY["small-cnn"]
    shipped = dataclasses.replace(spec.defaults, cam_threshold=0.3, cream_threshold=0.55)
    monkeypatch.setitem(backbones.REGISTRY, "small-cnn", dataclasses.replace(spec, defaults=shipped))
    for mode, want in (("cream", 0.55), ("cam", 0.3)):
        path = tmp_path / f"{mode}.onnx"
        run("export", "--checkpoint", tiny["ckpt"], "--out", path, "--mode", mode, expect=0)
        with Localizer.load(path) as loc:
            assert (loc.threshold, loc.threshold_source) == (want, "network")
        with Localizer.load(path, threshold=0.4) as loc:
            assert (loc.threshold, loc.threshold_source) == (0.4, "argument")
        result = run("localize", image, "--model", path, "--out", out, expect=0)
        assert "warning" not in result.stderr


def test_an_unknown_setting_is_refused_where_it_enters():
    """Every string setting is checked once, by the config the EM takes, and a frozen config cannot
    be changed into an unchecked one."""
    import dataclasses

    for field, value in (("calibration", "omgea"), ("feature_mean", "mean"), ("embeddings", "both"),
                         ("fallback", "zeros")):
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            CreamConfig(**{field: value})
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            CreamConfig().with_changes(**{field: value})
    with pytest.raises(dataclasses.FrozenInstanceError):
        CreamConfig().calibration = "omgea"


def test_a_model_file_of_the_other_kind_says_what_to_do(tiny, tmp_path):
    """An .onnx given where a checkpoint is expected, a .pt given to `localize --model`, a split
    that does not exist: one line that says what was expected."""
    from cli_helpers import assert_one_error

    out = tmp_path / "x.pt"
    assert_one_error(run("fit-embeddings", "--checkpoint", tiny["model"], "--data", tiny["data"], "--out", out),
                     "an ONNX export", "the checkpoint (.pt)")
    image = next((tiny["data"] / "images").rglob("*.png"))
    assert_one_error(run("localize", image, "--model", tiny["ckpt"], "--out", tmp_path / "r.jsonl"),
                     "cream export --checkpoint")
    assert_one_error(run("eval", "--model", tiny["model"], "--data", tiny["data"], "--split", "validation"),
                     "has the splits test, train, val")
    assert not out.exists() and not (tmp_path / "r.jsonl").exists()


def test_help_shows_defaults():
    text = run("train", "--help").stdout
    for option, default in (("--epochs", "6"), ("--batch-size", "32"), ("--lr", "0.01"), ("--seed", "0")):
        start = text.index(f"\n  {option} ")
        line = text[start:text.index("\n  --", start + 1)]
        assert f"default: {default}" in line, line


def test_fit_embeddings_takes_a_place_name(tiny, tmp_path):
    """`--em-layer stage5.last` on a stock Lite0 resolves to `_blocks.10`; the model's own layer
    named by place keeps the checkpoint's layer (no refit error with the momentum estimate)."""
    from cream_rt.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt, out = tmp_path / "lite.pt", tmp_path / "fit.pt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, create_model("efficientnet-lite0", 3, input_size=64, stock_strides=True,
                                       cream=CreamConfig(em_layer="cam")))
    run("fit-embeddings", "--checkpoint", ckpt, "--data", tiny["data"], "--out", out, "--em-layer", "stage5.last",
        "--batch-size", "8", expect=0)
    model = load_checkpoint(out)[0]
    assert model.em_layer == "_blocks.10" and model.embedding_fitted.any()
    run("fit-embeddings", "--checkpoint", out, "--data", tiny["data"], "--out", tmp_path / "again.pt",
        "--em-layer", "stage5.last", "--estimate", "momentum", "--refine", "1", "--batch-size", "8", expect=0)
