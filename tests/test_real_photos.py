"""Real photographs (`../shared/data/real`, read in place; skipped with the reason where it is
absent): the imported EfficientNet-Lite0/1/2 ImageNet classifiers against the package their
weights were published for, with timm's statement of their preprocessing; eager vs ONNX parity
on real photos; a real folder with a truncated JPEG and a JPEG with bytes after its end-of-image
marker."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cli_helpers import run  # noqa: E402
from conftest import REPO  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
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


LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def reference_lite(name: str):
    """The network the weights were published for (PyPI `efficientnet-lite-pytorch`, lukemelas'
    code with TF 'SAME' padding, stock strides) with those weights, and the normalisation timm's
    `tf_<name>` config states for them: code that is not ours on both counts."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    from cream_rt.model.backbones import lite_weights_path
    from cream_rt.model.tvshim import import_torchvision_models

    import_torchvision_models()  # timm imports torchvision, whose CUDA-built ops do not load on CPU torch
    timm = pytest.importorskip("timm")
    net = lite.EfficientNet.from_pretrained(name, weights_path=lite_weights_path(name)).eval()
    cfg = timm.create_model("tf_" + name.replace("-", "_"), pretrained=False).pretrained_cfg
    return net, cfg


def reference_batch(paths, cfg) -> torch.Tensor:
    """The photos as the reference sees them: PIL decode (as stored), OpenCV bilinear resize of
    the whole photo to timm's input size (the resize the WSOL protocol uses), timm's mean and std."""
    import cv2
    from PIL import Image

    size = cfg["input_size"][-1]
    pixels = [cv2.resize(np.asarray(Image.open(p).convert("RGB")), (size, size), interpolation=cv2.INTER_LINEAR)
              for p in paths]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).double() / 255
    mean, std = (torch.tensor(cfg[k], dtype=torch.float64).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    return ((x - mean) / std).float()


@pytest.mark.parametrize("name", LITES)
def test_imported_lite_classifies_real_photos_as_its_weights_do(name, real, tmp_path):
    """`cream import --from imagenet`: the spec's input size and normalisation are timm's for these
    weights; the logits on real photos equal the weights' own package's (1e-4), stock strides
    included; the EM on the stride-16 layer leaves them as they are; `cream eval`'s top-1 on the
    200 val photos is the reference's (Lite0; Lite1 and Lite2 on 24 photos: the same code, at a
    third of the suite's real-photo time); `cream localize` reports the reference's class and its
    softmax probability as `score`."""
    from cream_rt.metadata import read_split
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.preprocess import preprocess_batch, read_image

    net, cfg = reference_lite(name)
    ckpt = tmp_path / "lite.pt"
    run("import", "--from", "imagenet", "--arch", name, "--out", ckpt, expect=0)
    model = load_checkpoint(ckpt)[0].eval()
    assert model.config.num_classes == 1000 and model.config.class_names[0] == "tench"
    assert model.config.input_size == cfg["input_size"][-1] and model.config.stock_strides
    assert tuple(model.config.mean) == tuple(cfg["mean"]) and tuple(model.config.std) == tuple(cfg["std"])
    meta = read_split(real["ilsvrc"] / "metadata" / "val")
    paths = [real["images"] / i for i in meta.image_ids]
    if name != "efficientnet-lite0":
        paths = paths[:24]
    size = model.config.input_size
    x = torch.from_numpy(preprocess_batch([read_image(p) for p in paths[:24]], size, model.config.mean,
                                          model.config.std))
    with torch.no_grad():
        reference = torch.cat([net(reference_batch(paths[i:i + 50], cfg)) for i in range(0, len(paths), 50)])
        ours = model.logits(model.features(x))  # the EM on the default stride-16 layer: CAM features resized
        cam_only = model.logits(model.features(x, with_em=False))
    assert model.em_grid != model.cam_grid  # the default EM layer is one stride step finer than the CAM
    np.testing.assert_allclose(cam_only.numpy(), reference[:24].numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.numpy(), reference[:24].numpy(), atol=1e-4)
    if name == "efficientnet-lite0":
        labels = torch.tensor([meta.class_labels[i] for i in meta.image_ids])
        top1 = float((reference.argmax(1) == labels).float().mean()) * 100
        out = run("eval", "--checkpoint", ckpt, "--images", real["images"], "--metadata",
                  real["ilsvrc"] / "metadata", "--split", "val", "--mode", "cam", "--json", expect=0)
        assert json.loads(out.stdout)["classification_top1"] == pytest.approx(top1)
        assert top1 > 80, top1  # the issue's measurement with the weights' own code: 82.0 (Lite0)
    onnx_path, results = tmp_path / "m.onnx", tmp_path / "r.jsonl"
    run("export", "--checkpoint", ckpt, "--out", onnx_path, expect=0)
    run("localize", *paths[:8], "--model", onnx_path, "--out", results, expect=0)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    probs = torch.softmax(reference[:8].double(), 1)
    for record, p in zip(records, probs):
        assert record["class_id"] == int(p.argmax())
        assert record["score"] == pytest.approx(float(p.max()), abs=1e-4)


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


def _through_both_doors(name: str, tmp_path) -> tuple:
    """(timm's `tf_<name>` holding the Lite weights tensor by tensor in order, {"imagenet": the
    `--from imagenet` checkpoint, "timm": the `--from timm` import of that network's weights})."""
    from cream_rt.model import ensure_torchvision
    from cream_rt.model.backbones import lite_weights_path
    from cream_rt.model.importers import read_state_dict

    ensure_torchvision()
    timm = pytest.importorskip("timm")
    arch = "tf_" + name.replace("-", "_")
    net = timm.create_model(arch, pretrained=False).eval()
    lite = read_state_dict(lite_weights_path(name))
    net.load_state_dict(dict(zip(net.state_dict(), lite.values())))
    torch.save(net.state_dict(), tmp_path / "timm_lite.pth")
    paths = {"imagenet": tmp_path / "imagenet.pt", "timm": tmp_path / "timm.pt"}
    run("import", "--from", "imagenet", "--arch", name, "--out", paths["imagenet"], expect=0)
    run("import", tmp_path / "timm_lite.pth", "--from", "timm", "--arch", arch, "--out", paths["timm"], expect=0)
    return net, paths


@pytest.mark.parametrize("name", LITES[1:])
def test_lite1_and_lite2_through_the_timm_door_classify_and_map_as_the_imagenet_import(name, real, tmp_path):
    """Lite1 / Lite2 in timm's own network: timm's preprocessing is the import's, the logits and
    the CAM maps on real photos equal `--from imagenet`'s (1e-4). (Lite0: the test below, with
    CREAM fitted and scored through both doors and the API.)"""

    _, paths = _through_both_doors(name, tmp_path)
    _assert_same_classifier(paths, real)


def _assert_same_classifier(paths: dict, real: dict, photos: int = 12) -> None:
    """Both doors' checkpoints: the same preprocessing, logits and CAM maps on real photos (1e-4)."""
    from cream_rt.metadata import read_split
    from cream_rt.model import load_checkpoint
    from cream_rt.preprocess import preprocess_batch, read_image

    a, b = (load_checkpoint(p)[0] for p in (paths["imagenet"], paths["timm"]))
    assert (a.config.input_size, a.config.mean, a.config.std) == (b.config.input_size, b.config.mean, b.config.std)
    meta = read_split(real["meta"] / "val")
    x = torch.from_numpy(preprocess_batch([read_image(real["images"] / i) for i in meta.image_ids[:photos]],
                                          a.config.input_size, a.config.mean, a.config.std))
    with torch.no_grad():
        (la, ma, _), (lb, mb, _) = a(x, mode="cam"), b(x, mode="cam")
    np.testing.assert_allclose(lb.numpy(), la.numpy(), atol=1e-4)
    np.testing.assert_allclose(mb.numpy(), ma.numpy(), atol=1e-4)


def test_lite0_through_the_timm_door_is_the_imagenet_import(real, tmp_path):
    """The Lite0 weights loaded into timm's own `tf_efficientnet_lite0` (tensor by tensor in
    order) and imported with `cream import --from timm`: timm's preprocessing, the same logits
    on real photos as `--from imagenet` (1e-4), and, with CREAM fitted on the same photos and the
    same EM layer (timm's `blocks.4` is our `stage5.last`), the same maps and MaxBoxAccV2 through
    the CLI; the network fitted in memory through the API scores the same (dMaxBoxAccV2 0)."""
    from cream_rt.evaluate import evaluate_map_folder
    from cream_rt.metadata import read_split
    from cream_rt.model import CREAM, load_checkpoint

    net, paths = _through_both_doors("efficientnet-lite0", tmp_path)
    layers = {"imagenet": "stage5.last", "timm": "blocks.4"}
    data = ("--images", real["images"], "--metadata", real["meta"])
    scores: dict[str, dict] = {}
    for door, path in paths.items():
        fitted = tmp_path / f"{door}-fit.pt"
        run("fit-embeddings", "--checkpoint", path, *data, "--em-layer", layers[door], "--out", fitted, expect=0)
        out = run("eval", "--checkpoint", fitted, *data, "--split", "val", "--save-maps", tmp_path / door, "--json",
                  expect=0)
        scores[door] = json.loads(out.stdout)
    _assert_same_classifier(paths, real)
    meta = read_split(real["meta"] / "val")
    a = load_checkpoint(paths["imagenet"])[0]
    for image_id in meta.image_ids:
        np.testing.assert_allclose(np.load(tmp_path / "timm" / f"{image_id}.npy"),
                                   np.load(tmp_path / "imagenet" / f"{image_id}.npy"), atol=1e-4)
    assert scores["timm"]["MaxBoxAccV2"] == scores["imagenet"]["MaxBoxAccV2"]
    assert scores["timm"]["classification_top1"] == scores["imagenet"]["classification_top1"]
    with CREAM(net, em_layer="blocks.4") as cream:
        assert cream.config.backbone == "timm/tf_efficientnet_lite0"
        cream.fit(images=real["images"], metadata=real["meta"])
        results = cream.localize([real["images"] / i for i in meta.image_ids], return_maps=True,
                                 class_ids=[meta.class_labels[i] for i in meta.image_ids])
    for image_id, result in zip(meta.image_ids, results):
        (tmp_path / "api" / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "api" / f"{image_id}.npy", result.map)
        np.testing.assert_allclose(result.map, np.load(tmp_path / "timm" / f"{image_id}.npy"), atol=1e-6)
    api = evaluate_map_folder(tmp_path / "api", meta, map_size=(a.config.input_size,) * 2)
    assert api["MaxBoxAccV2"] == scores["timm"]["MaxBoxAccV2"]
