"""Any CNN classifier (issue 40): timm and torchvision networks of six families, random weights,
wrapped in memory (`cream_rt.model.wrap` / `CREAM`) and imported from files (`cream import --from
timm|torchvision`). References that are not ours: the network's own forward (logits), its
library's own feature path (`forward_features`, the torchvision module tree) with its classifier's
weights by hand (CAM, the exact per-pixel logit for ConvNeXt's normed head), the float64 NumPy EM
of test_reactivate, ONNX Runtime on the export."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from cli_helpers import assert_one_error, run  # noqa: E402
from test_import import _randomized  # noqa: E402
from test_reactivate import np_minmax, np_reactivate  # noqa: E402

from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.errors import CreamError  # noqa: E402
from cream_rt.model import CREAM, WeightsPreprocessing, ensure_torchvision, load_checkpoint, wrap  # noqa: E402
from cream_rt.model.cam_form import NoCamForm  # noqa: E402

SIZE = 64
CLASSES = 5
PRE = WeightsPreprocessing(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, "test")
# (library, architecture, the CAM layer, the classifier, the activation outside any module, the norm)
FAMILIES = {
    "resnet18-timm": ("timm", "resnet18", "layer4", "fc", "none", None),
    "resnet50-torchvision": ("torchvision", "resnet50", "layer4", "fc", "none", None),
    "convnext-timm": ("timm", "convnext_atto", "norm_pre", "head.fc", "none", "head.norm"),
    "regnet-torchvision": ("torchvision", "regnet_x_400mf", "trunk_output", "fc", "none", None),
    "efficientnet_b0-timm": ("timm", "efficientnet_b0", "bn2", "classifier", "none", None),
    "densenet121-torchvision": ("torchvision", "densenet121", "features", "classifier", "relu", None),
    "mobilenet_v2-torchvision": ("torchvision", "mobilenet_v2", "features", "classifier.1", "none", None),
}

# maps, ONNX Runtime vs eager: 1e-5, except where the random-weight network's own float32 forward
# already differs more between the two (MobileNetV2's depthwise stack: logits 1.2e-5 relative, CAM
# maps 3.7e-5 in CAM mode, before CREAM's EM; ResNet-50: 1e-6 and 3.7e-6)
EXPORT_ATOL = {"mobilenet_v2-torchvision": 5e-5}


@pytest.fixture(scope="module", autouse=True)
def libraries():
    try:
        ensure_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")
    pytest.importorskip("timm")


def build(hub: str, arch: str, classes: int = CLASSES) -> nn.Module:
    """The network built by its library, random weights with non-trivial norms and statistics."""
    if hub == "timm":
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=classes)
    else:
        import torchvision.models as tvm

        net = tvm.get_model(arch, weights=None, num_classes=classes)
    return _randomized(net)


def library_features(hub: str, arch: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature map the head pools, by the library's own path (no hooks)."""
    if hub == "timm":
        return net.forward_features(x)
    if arch == "resnet50":
        return nn.Sequential(*list(net.children())[:-2])(x)
    if arch.startswith("regnet"):
        return net.trunk_output(net.stem(x))
    if arch.startswith("densenet"):
        return F.relu(net.features(x))
    return net.features(x)


def per_pixel_logit(hub: str, arch: str, net: nn.Module, feats: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Float64, by hand: each cell's share of the class logit (the mean over cells is the logit
    less its constant); through ConvNeXt's LayerNorm of the pooled vector, its mean and variance
    being the image's."""
    f = feats.astype(np.float64)
    if hub == "timm":
        fc = net.get_classifier()
    else:
        fc = getattr(net, "fc", None) or (net.classifier[-1] if isinstance(net.classifier, nn.Sequential)
                                          else net.classifier)
    w = fc.weight.detach().double().numpy()[classes]
    if arch.startswith("convnext"):
        norm = net.head.norm
        pooled = f.mean((2, 3))
        mu, var = pooled.mean(1), pooled.var(1)
        gamma = norm.weight.detach().double().numpy()
        scaled = (f - mu[:, None, None, None]) / np.sqrt(var + norm.eps)[:, None, None, None]
        return np.einsum("bk,bkhw->bhw", w * gamma, scaled)
    return np.einsum("bk,bkhw->bhw", w, f)


def per_image_minmax(maps: np.ndarray) -> np.ndarray:
    return np.stack([np_minmax(m) for m in maps.astype(np.float64)])


def _close(a, b, tol: float) -> None:
    np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapped_network_keeps_its_logits_and_its_cam_is_features_times_weights(family):
    """The CAM form found is the architecture's; logits = the network's own forward; the CAM =
    the library's features times the classifier's weights (float64 by hand; min-max normalised,
    which removes the per-image shift and scale of ConvNeXt's norm)."""
    hub, arch, layer, classifier, activation, norm = FAMILIES[family]
    net = build(hub, arch)
    model = wrap(net, preprocessing=PRE)
    form = model.config.cam_form
    assert (form.cam_layer, form.classifier, form.activation, form.norm) == (layer, classifier, activation, norm)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([0, 4, 2])
    with torch.no_grad():
        own = net(x).numpy()
        logits, maps, used = model(x, ids, mode="cam")
        feats = library_features(hub, arch, net, x).numpy()
        ours = model.cam(model.features(x), ids).numpy()
    _close(logits.numpy(), own, 1e-5)
    assert used.tolist() == ids.tolist() and maps.shape == (3, SIZE, SIZE)
    want = per_pixel_logit(hub, arch, net, feats, ids.numpy())
    np.testing.assert_allclose(per_image_minmax(ours), per_image_minmax(want), atol=1e-5)


# exported in the suite: five families (DenseNet-121's and ResNet-50's exports take 30 s and 12 s
# here; the same code path)
EXPORTED = ("resnet18-timm", "convnext-timm", "regnet-torchvision", "efficientnet_b0-timm", "mobilenet_v2-torchvision")


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapped_cream_matches_the_float64_em_and_its_export_matches_eager(family, tmp_path):
    """CREAM on the wrapped network = the float64 NumPy EM on the library's features and the
    hand-computed CAM; the ONNX export (dynamic batch: 1 and 3) = eager, maps within 1e-5."""
    from cream_rt.export.onnx_export import export_model
    from cream_rt.session import OnnxPredictor

    hub, arch = FAMILIES[family][:2]
    net = build(hub, arch)
    model = wrap(net, preprocessing=PRE, cream=CreamConfig(iterations=2))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        feats = library_features(hub, arch, net, x).numpy()
        model.feature_center.copy_(torch.from_numpy(feats.mean((0, 2, 3))))
        model.embeddings.copy_(torch.rand(model.embeddings.shape, generator=g))
        model.embedding_fitted.fill_(True)
    ids = torch.tensor([1, 3, 0])
    want = np_reactivate(feats, per_pixel_logit(hub, arch, net, feats, ids.numpy()),
                         model.embeddings[ids].numpy(), 2, 8.0, 0.2, True, calibration="cam-mean",
                         center=model.feature_center.numpy())
    with torch.no_grad():
        got = model.maps_from_features(model.features(x), ids).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    if family not in EXPORTED:
        return
    export_model(model, tmp_path / "m.onnx")
    predictor = OnnxPredictor.load(tmp_path / "m.onnx")
    for b in (1, 3):
        batch = torch.randn(b, 3, SIZE, SIZE, generator=g)
        with torch.no_grad():
            logits, maps, _ = model(batch, torch.full((b,), -1))
        o_logits, o_maps = predictor(batch.numpy(), np.full(b, -1, np.int64))
        _close(o_logits, logits.numpy(), 2e-5)
        np.testing.assert_allclose(o_maps, maps.numpy(), atol=EXPORT_ATOL.get(family, 1e-5))


def test_a_network_in_memory_and_the_same_network_imported_from_a_file_give_identical_maps(tmp_path):
    """timm's ResNet-18 wrapped in memory, fitted and saved; the same weights through `cream
    import --from timm` give the same CAM maps, and the saved API checkpoint reloads to the same
    CREAM maps; `CREAM` leaves the network in the mode it found it."""
    net = build("timm", "resnet18").train()
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3])
    with CREAM(net, preprocessing=PRE) as cream:
        assert cream.config.backbone == "timm/resnet18" and not net.training
        cam_maps = cream(x, labels, mode="cam").maps
        cream.fit([(x[:2], labels[:2]), (x[2:], labels[2:])])
        cream_maps = cream(x).maps
        cream.save(tmp_path / "api.pt")
    assert net.training  # given back as it was
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    run("import", tmp_path / "r18.pth", "--from", "timm", "--arch", "resnet18", "--input-size", SIZE, "--out",
        tmp_path / "cli.pt", expect=0)
    imported = load_checkpoint(tmp_path / "cli.pt")[0]
    saved = load_checkpoint(tmp_path / "api.pt")[0]
    assert imported.config.cam_form == saved.config.cam_form
    with torch.no_grad():
        np.testing.assert_allclose(imported(x, labels, "cam")[1].numpy(), cam_maps.numpy(), atol=1e-6)
        np.testing.assert_allclose(saved(x)[1].numpy(), cream_maps.numpy(), atol=1e-6)
    assert not torch.equal(cam_maps, cream(x, labels).maps)  # the fitted EM changed the maps


class OwnNet(nn.Module):
    """A user's own classifier: convolutions, a 1x1 convolution as the classifier, then pooling."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.score = nn.Conv2d(32, 3, 1)

    def forward(self, x):
        return self.score(self.body(x)).mean((2, 3))


def test_a_users_own_module_wraps_saves_and_reloads_with_its_network(tmp_path):
    """A 1x1-convolution classifier before the pooling is a CAM form; a `module/` checkpoint
    reloads only with the network given, to the same maps."""
    torch.manual_seed(0)
    net = OwnNet().eval()
    model = wrap(net, preprocessing=PRE)
    form = model.config.cam_form
    assert model.config.backbone == "module/OwnNet" and (form.cam_layer, form.classifier) == ("body", "score")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits, maps, _ = model(x, mode="cam")
        _close(logits.numpy(), net(x).numpy(), 1e-5)
        hand = torch.einsum("bkhw,bk->bhw", net.body(x), net.score.weight.flatten(1)[logits.argmax(1)])
        ours = model.cam(model.features(x), logits.argmax(1)).numpy()
    np.testing.assert_allclose(per_image_minmax(ours), per_image_minmax(hand.numpy()), atol=1e-5)
    CREAM(net, preprocessing=PRE).save(tmp_path / "own.pt")
    with pytest.raises(CreamError, match="wrapped in memory"):
        load_checkpoint(tmp_path / "own.pt")
    again = load_checkpoint(tmp_path / "own.pt", network=OwnNet())[0]
    with torch.no_grad():
        np.testing.assert_allclose(again(x, mode="cam")[1].numpy(), maps.numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic WSOL folder (train 40, val 10, test 16 images of 64 px, 5 classes)."""
    data = tmp_path_factory.mktemp("syn")
    run("synth", "--out", data, "--classes", CLASSES, "--size", SIZE, "--train", 40, "--val", 10, "--test", 16,
        expect=0)
    return data


def test_the_api_and_the_cli_give_the_same_maps_and_scores_on_the_same_images(synthetic, tmp_path):
    """A torchvision RegNet imported and fitted by the CLI and the same network fitted through
    the API on the same folder: `cream eval --save-maps` maps = `CREAM.localize(return_maps)`
    maps (1e-6) and the same MaxBoxAccV2."""
    from cream_rt.evaluate import evaluate_map_folder
    from cream_rt.metadata import read_split

    data = synthetic
    net = build("torchvision", "regnet_x_400mf")
    torch.save(net.state_dict(), tmp_path / "regnet.pth")
    run("import", tmp_path / "regnet.pth", "--from", "torchvision", "--arch", "regnet_x_400mf", "--input-size",
        SIZE, "--out", tmp_path / "imported.pt", expect=0)
    run("fit-embeddings", "--checkpoint", tmp_path / "imported.pt", "--data", data, "--out", tmp_path / "fitted.pt",
        expect=0)
    out = run("eval", "--checkpoint", tmp_path / "fitted.pt", "--data", data, "--split", "test", "--save-maps",
              tmp_path / "cli_maps", "--json", expect=0)
    cli = json.loads(out.stdout)
    meta = read_split(data / "metadata" / "test")
    with CREAM(net, preprocessing=PRE, name="torchvision/regnet_x_400mf") as cream:
        cream.fit(data)
        results = cream.localize([data / "images" / i for i in meta.image_ids], return_maps=True,
                                 class_ids=[meta.class_labels[i] for i in meta.image_ids])
    for image_id, result in zip(meta.image_ids, results):
        cli_map = np.load(tmp_path / "cli_maps" / f"{image_id}.npy")
        np.testing.assert_allclose(result.map, cli_map, atol=1e-6)
        (tmp_path / "api_maps" / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "api_maps" / f"{image_id}.npy", result.map)
    api = evaluate_map_folder(tmp_path / "api_maps", meta, map_size=(SIZE, SIZE))
    assert api["MaxBoxAccV2"] == cli["MaxBoxAccV2"]


@pytest.mark.parametrize("hub,arch,why", [("torchvision", "mobilenet_v3_small", "a hidden layer (VGG, MobileNetV3)"),
                                          ("timm", "vit_tiny_patch16_224", "a class token (ViT)")])
def test_a_head_without_a_cam_form_is_refused_with_one_line(hub, arch, why, tmp_path):
    import timm
    import torchvision.models as tvm

    net = timm.create_model(arch) if hub == "timm" else tvm.get_model(arch, weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    result = run("import", tmp_path / "w.pth", "--from", hub, "--arch", arch, "--out", tmp_path / "x.pt")
    assert_one_error(result, "no CAM form", why, "CAM needs pooling")
    assert not (tmp_path / "x.pt").exists()


def test_wrong_names_and_layers_are_refused():
    import torchvision.models as tvm

    net = build("torchvision", "resnet18")
    with pytest.raises(CreamError, match="not what torchvision builds as resnet34"):
        wrap(net, preprocessing=PRE, name="torchvision/resnet34")
    with pytest.raises(NoCamForm, match="no module named 'layer9'"):
        wrap(net, "layer9", preprocessing=PRE)
    with pytest.raises(NoCamForm, match="does not read the average of layer 'layer3'"):
        wrap(net, "layer3", preprocessing=PRE)
    with pytest.raises(NoCamForm, match="hidden layer"):
        wrap(tvm.vgg11(weights=None), preprocessing=PRE)
    model = wrap(net, preprocessing=PRE, name="torchvision/resnet18", em_layer="layer3")
    assert model.em_layer == "layer3" and model.em_grid != model.cam_grid


def test_ensure_torchvision_is_applied_only_where_torchvision_fails_to_import(tmp_path):
    """With the pinned CUDA-built torchvision, a plain import fails and `ensure_torchvision`
    makes it (and timm) import; with a torchvision that imports (a stand-in package first on the
    path), it touches nothing."""
    probe = textwrap.dedent("""
        import json, sys
        plain = True
        try:
            import torchvision
        except RuntimeError:
            plain = False
        from cream_rt.model.tvshim import ensure_torchvision, shim_applied
        needed = ensure_torchvision()
        import torchvision.models
        json.dump({"plain": plain, "needed": needed, "applied": shim_applied(),
                   "file": torchvision.__file__}, sys.stdout)
    """)
    stock = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                      timeout=120).stdout)
    fake = tmp_path / "site" / "torchvision"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    env_path = f"{tmp_path / 'site'}"
    matching = json.loads(subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r})\n"
                                          + probe], capture_output=True, text=True, check=True, timeout=120).stdout)
    if stock["plain"]:
        pytest.skip("this machine's torchvision imports as it is: the shim is never needed here")
    assert stock["needed"] and stock["applied"]
    assert matching == {"plain": True, "needed": False, "applied": False, "file": str(fake / "__init__.py")}


def test_import_options_are_checked(tmp_path):
    net = build("timm", "resnet18")
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    assert_one_error(run("import", tmp_path / "r18.pth", "--from", "timm", "--arch", "resnet34", "--out",
                                 tmp_path / "x.pt"), "no weight for")
    assert_one_error(run("import", "--from", "timm", "--arch", "resnet18", "--out", tmp_path / "x.pt"),
                     "expected the weights file")
    assert_one_error(run("import", "--from", "imagenet", "--arch", "efficientnet-lite0", "--cam-layer", "x",
                                 "--out", tmp_path / "x.pt"), "--cam-layer applies to networks built by timm")
    assert_one_error(run("import", tmp_path / "r18.pth", "--from", "torchvision", "--arch", "resnet18",
                                 "--weights", "NOPE", "--out", tmp_path / "x.pt"), "--weights NOPE")
    assert not (tmp_path / "x.pt").exists()


def test_the_api_tunes_fits_from_a_dataset_and_boxes_a_batch(synthetic):
    """`CREAM.tune` is `cream tune` on the model in memory (a threshold and a record); `fit` takes
    a Dataset of samples; `boxes` gives the protocol's box of a hand-made map (cells 20..49 x
    10..29 on: cv2.boundingRect's x, y, w, h = 20, 10, 30, 20)."""
    from torch.utils.data import TensorDataset

    net = build("timm", "resnet18")
    with CREAM(net, preprocessing=PRE) as cream:
        x = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
        record = cream.fit(TensorDataset(x, torch.tensor([0, 1, 2, 3, 4, 0])), batch_size=4)
        assert record["center"] and bool(cream.model.embedding_fitted[:5].all())
        tuned = cream.tune(synthetic, iterations=(1,), layers=["cam", "layer3"])
        assert cream.config.box_threshold == tuned["box_threshold"] and tuned["rows"]
        assert cream.model.backbone.net is net  # still the caller's network, whichever layer was chosen
        maps = torch.zeros(1, SIZE, SIZE)
        maps[0, 10:30, 20:50] = 1.0
        boxes = cream.boxes(maps, threshold=0.5)
    assert boxes[0].tolist() == [[20, 10, 50, 30]]  # wsolevaluation's [x, y, x + w, y + h] of the blob


def test_backbones_lists_the_blocks_of_a_library_network():
    rows = json.loads(run("backbones", "--layers", "torchvision/resnet18", "--json", expect=0).stdout)
    named = {r["layer"]: r for r in rows}
    assert rows[-1]["layer"] == "layer4" and named["layer3"]["em_layer"] and not named["layer2"]["em_layer"]
    assert named["layer3"]["cells"] == [14, 14] and named["layer3"]["channels"] == 256
