"""Real photographs (`../shared/data/real`, read in place; skipped with the reason where it is
absent): the imported EfficientNet-Lite0 ImageNet classifier against an independent functional
forward of the same weights, eager vs ONNX parity on real photos, and a real folder with a
truncated JPEG and a JPEG with bytes after its end-of-image marker."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from cli_helpers import run  # noqa: E402
from conftest import REPO  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
# EfficientNet-Lite0 (expand, kernel, stride, channels, repeats) per stage, written out here;
# the CAM layout runs the 192-channel stage (index 5) at stride 1 (14x14 at 224 px)
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 1, 192, 4), (6, 3, 1, 320, 1))


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """The data roots, and `meta`: a metadata root over the ilsvrc_dev photos whose train and
    val splits are the first 48 photos of its val split (a short run of the real pipeline)."""
    if not (REAL / "ilsvrc_dev" / "metadata" / "val").is_dir():
        pytest.skip(f"real photographs not found at {REAL}")
    meta = tmp_path_factory.mktemp("meta")
    source = REAL / "ilsvrc_dev" / "metadata" / "val"
    ids = (source / "image_ids.txt").read_text().split()[:48]
    for split in ("train", "val"):
        (meta / split).mkdir()
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            lines = [line for line in (source / name).read_text().splitlines() if line.split(",")[0] in ids]
            (meta / split / name).write_text("\n".join(lines) + "\n")
    return {"ilsvrc": REAL / "ilsvrc_dev", "rk": REAL / "raccoon_kangaroo", "meta": meta,
            "images": REAL / "ilsvrc_dev" / "images"}


def _same_conv(x, w, stride, groups=1):
    """TensorFlow SAME padding (asymmetric at stride 2), then the convolution."""
    pads = []
    for size, k in zip(x.shape[-2:][::-1], w.shape[-2:][::-1]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, None, stride, 0, 1, groups)


def lite0_logits(state: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's ImageNet logits from its state dict with functional ops only."""
    def bn(y, name):
        return F.batch_norm(y, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], False, 0.0, 1e-3)

    y = F.relu6(bn(_same_conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    index = 0
    for expand, _, stride, _, repeats in STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}"
            h = F.relu6(bn(F.conv2d(y, state[f"{p}._expand_conv.weight"]), f"{p}._bn0")) if expand != 1 else y
            w = state[f"{p}._depthwise_conv.weight"]
            h = F.relu6(bn(_same_conv(h, w, stride if r == 0 else 1, groups=w.shape[0]), f"{p}._bn1"))
            h = bn(F.conv2d(h, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
            y = y + h if h.shape == y.shape and (r > 0 or stride == 1) else h
            index += 1
    y = F.relu6(bn(F.conv2d(y, state["_conv_head.weight"]), "_bn1"))
    return F.linear(y.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_imported_lite0_classifies_real_photos_as_its_weights_do(real, tmp_path):
    """`cream import --from imagenet`: `cream eval` top-1 on ilsvrc_dev val = the functional
    forward's top-1, image by image; the ImageNet class names come with it."""
    from cream_rt.metadata import read_split
    from cream_rt.model.backbones import lite0_weights_path
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.preprocess import preprocess_batch, read_image

    ckpt = tmp_path / "lite0.pt"
    run("import", "--from", "imagenet", "--arch", "efficientnet-lite0", "--out", ckpt, expect=0)
    model = load_checkpoint(ckpt)[0]
    assert model.config.num_classes == 1000 and model.config.class_names[0] == "tench"
    meta = read_split(real["ilsvrc"] / "metadata" / "val")
    state = torch.load(lite0_weights_path(), weights_only=True)
    ids = meta.image_ids[:48]
    x = torch.from_numpy(preprocess_batch([read_image(real["ilsvrc"] / "images" / i) for i in ids], 224,
                                          model.config.mean, model.config.std))
    with torch.no_grad():
        ours = model.logits(model.features(x))
        reference = lite0_logits(state, x)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=2e-3)
    assert (ours.argmax(1) == reference.argmax(1)).all()
    labels = torch.tensor([meta.class_labels[i] for i in ids])
    top1 = float((reference.argmax(1) == labels).float().mean()) * 100
    out = run("eval", "--checkpoint", ckpt, "--images", real["images"], "--metadata", real["meta"] / "val",
              "--mode", "cam", "--json", expect=0)
    assert json.loads(out.stdout)["classification_top1"] == pytest.approx(top1)
    assert 45 < top1 < 90, top1  # the photos are squashed to 227 x 227


def test_eager_and_export_agree_on_real_photos(real, tmp_path):
    """A fitted Lite0 (the EM on its default layer) exported to ONNX: maps within 1e-5 of the
    eager model's and the same MaxBoxAccV2 on real photos (`cream parity`)."""
    ckpt, fitted, onnx_path = tmp_path / "lite0.pt", tmp_path / "fit.pt", tmp_path / "m.onnx"
    run("import", "--from", "imagenet", "--arch", "efficientnet-lite0", "--out", ckpt, expect=0)
    run("fit-embeddings", "--checkpoint", ckpt, "--images", real["images"], "--metadata", real["meta"], "--out",
        fitted, expect=0)
    run("export", "--checkpoint", fitted, "--out", onnx_path, expect=0)
    out = run("parity", "--checkpoint", fitted, "--model", onnx_path, "--images", real["images"], "--metadata",
              real["meta"] / "val", "--json", expect=0)
    parity = json.loads(out.stdout)
    assert parity["maps_max_abs_diff"] <= 1e-5, parity
    assert parity["MaxBoxAccV2_eager"] == parity["MaxBoxAccV2_exported"] and parity["top1_agreement"] == 1.0


def test_a_real_folder_with_a_truncated_jpeg_trains(real, tmp_path):
    """raccoon_kangaroo as published: `kangaroo/00021.jpg` (zero bytes after its end-of-image
    marker) decodes; `kangaroo/00090.jpg` (truncated) is skipped, named in the record and in one
    warning line; with --max-bad-images 0 the run stops with one error line and writes nothing."""
    from cream_rt.preprocess import read_image

    assert read_image(real["rk"] / "images" / "kangaroo" / "00021.jpg").shape[2] == 3
    out = tmp_path / "m.pt"
    result = run("train", "--data", real["rk"], "--backbone", "small-cnn", "--epochs", "1", "--input-size", "32",
                 "--bn-batches", "1", "--out", out, "--json", expect=0)
    record = json.loads(result.stdout)
    assert record["unreadable_images"]["count"] == 1
    assert list(record["unreadable_images"]["images"]) == ["kangaroo/00090.jpg"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("cream: warning:")]
    assert len(warnings) == 1 and "kangaroo/00090.jpg" in warnings[0]
    strict = run("train", "--data", real["rk"], "--backbone", "small-cnn", "--epochs", "1", "--input-size", "32",
                 "--bn-batches", "1", "--out", tmp_path / "strict.pt", "--max-bad-images", "0")
    assert strict.returncode == 2 and "--max-bad-images 0" in strict.stderr
    assert not (tmp_path / "strict.pt").exists()
