"""Embedding refinement (`cream fit-embeddings --refine R`, train/refine.py): one round equals
its definition computed here in float64 NumPy (the EM's calibrated responsibilities as soft
masks, per-class means over the split), and the CLI writes a checkpoint whose record says so."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from test_reactivate import np_reactivate  # noqa: E402

from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.model.network import create_model  # noqa: E402
from cream_rt.train.refine import refine_embeddings  # noqa: E402

EPS = 1e-6


def _np_side_class_means(features, z, labels, embeddings, unit, center=None, fallback="class-mean"):
    """Per image the z-weighted mean (unit) feature on each side (of the features minus
    `center`), then the per-class mean of those; a class with no image gets the class-agnostic
    pair: the mean of the fitted classes' rows (class-mean) or of every image's (image-mean)."""
    new = np.zeros(embeddings.shape, np.float64)
    b, k = features.shape[:2]
    x = features.reshape(b, k, -1).astype(np.float64)
    if center is not None:
        x = x - center.astype(np.float64)[None, :, None]
    if unit:
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)
    fg = np.einsum("bkn,bn->bk", x, z) / z.sum(1, keepdims=True)
    bg = np.einsum("bkn,bn->bk", x, 1 - z) / (1 - z).sum(1, keepdims=True)
    seen = sorted(set(labels.tolist()))
    for cls in seen:
        new[cls, 0] = fg[labels == cls].mean(0)
        new[cls, 1] = bg[labels == cls].mean(0)
    pair = new[seen].mean(0) if fallback == "class-mean" else np.stack([fg.mean(0), bg.mean(0)])
    for cls in sorted(set(range(len(new))) - set(seen)):
        new[cls] = pair
    return new


def _np_round(features, cams, labels, embeddings, unit, center=None):
    """One refinement round from the definition: the calibrated responsibilities z~ of the EM
    as the soft masks of `_np_side_class_means`."""
    z = np_reactivate(features, cams, embeddings[labels], 2, 8.0, 0.2, unit, calibration="cam-mean", center=center)
    b = features.shape[0]
    cam_n = np.stack([(c - c.min()) / (c.max() - c.min()) for c in cams.reshape(b, -1).astype(np.float64)])
    z = z.reshape(b, -1) - cam_n  # the map is z~ + minmax(CAM)
    return _np_side_class_means(features, z, labels, embeddings, unit, center)


@pytest.mark.parametrize("center", [True, False], ids=["center", "no-center"])
def test_embedding_pass_matches_its_definition(center):
    """The pass: center = the split's mean feature over all cells (float64 here), class means
    of the side means under {minmax(CAM) >= tau}, then one refinement round from those."""
    from cream_rt.train.refine import embedding_pass

    torch.manual_seed(1)
    model = create_model("small-cnn", 4, input_size=32).eval()
    before = model.embeddings.clone().numpy()
    x = torch.randn(10, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    with torch.no_grad():
        features = model.features(x).numpy()
        cams = model.cam(torch.from_numpy(features), labels).numpy()
    b, k = features.shape[:2]
    want_center = features.astype(np.float64).transpose(1, 0, 2, 3).reshape(k, -1).mean(1) if center else None
    cam_n = np.stack([(c - c.min()) / (c.max() - c.min()) for c in cams.reshape(b, -1).astype(np.float64)])
    means = _np_side_class_means(features, (cam_n >= 0.2).astype(np.float64), labels.numpy(), before, True,
                                 want_center)
    want = _np_round(features, cams, labels.numpy(), means.astype(np.float32), True, want_center)
    record = embedding_pass(model, lambda: [(x[:6], labels[:6]), (x[6:], labels[6:])], center, 1)
    assert model.config.cream.center is center and record["center"] is center
    if center:
        np.testing.assert_allclose(model.feature_center.numpy(), want_center, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.embeddings.numpy(), want, atol=1e-5)
    # no image of class 3: the mean of the three fitted classes' pairs, recorded as a fallback
    np.testing.assert_allclose(model.embeddings[3].numpy(), model.embeddings[:3].numpy().mean(0), atol=1e-6)
    assert model.embedding_fitted.tolist() == [True, True, True, False] and record["fallback_classes"] == 1
    assert [r["round"] for r in record["refine"]] == [1]


@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_one_refinement_round_matches_its_definition(unit):
    torch.manual_seed(0)
    model = create_model("small-cnn", 4, input_size=32,
                         cream=CreamConfig(feature_mean="unit" if unit else "raw")).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    before = model.embeddings.clone().numpy()
    x = torch.randn(10, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # class 3 has no image: the fallback
    with torch.no_grad():
        features = model.features(x)
        cams = model.cam(features, labels)
    history = refine_embeddings(model, lambda: [(x[:6], labels[:6]), (x[6:], labels[6:])], 1)
    want = _np_round(features.numpy(), cams.numpy(), labels.numpy(), before, unit)
    np.testing.assert_allclose(model.embeddings.numpy(), want, atol=1e-5)
    assert len(history) == 1 and history[0]["mean_change"] > 0


def test_refinement_reads_the_split_once_when_it_fits():
    """Rounds after the first reuse the features of the first (the split fits in memory)."""
    model = create_model("small-cnn", 2, input_size=32).eval()
    calls = []

    def batches():
        calls.append(1)
        return [(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0, 1]))]

    refine_embeddings(model, batches, 3)
    assert len(calls) == 1


def test_fit_embeddings_refine_cli(tiny, tmp_path):
    from cli_helpers import run

    out = tmp_path / "refined.pt"
    result = run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out,
                 "--estimate", "momentum", "--refine", "2", "--json", expect=0)
    record = json.loads(result.stdout)
    assert [r["round"] for r in record["refine_embeddings"]["history"]] == [1, 2]
    payload = torch.load(out, weights_only=True)
    assert payload["training"]["refine_embeddings"]["rounds"] == 2
    original = torch.load(tiny["ckpt"], weights_only=True)["state_dict"]["embeddings"]
    assert (payload["state_dict"]["embeddings"] - original).abs().max() > 1e-4
    run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", tmp_path / "bad.pt",
        "--refine", "-1", expect=2)
    assert not (tmp_path / "bad.pt").exists()


def test_refinement_rereads_a_split_too_large_to_keep(monkeypatch):
    """Past CACHE_BYTES every round reads the split again, with the same result as cached rounds."""
    import cream_rt.train.refine as refine

    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0, 1])
    results = []
    for limit in (1 << 30, 1):
        monkeypatch.setattr(refine, "CACHE_BYTES", limit)
        torch.manual_seed(0)
        model = create_model("small-cnn", 2, input_size=32).eval()
        calls = []
        refine_embeddings(model, lambda calls=calls: calls.append(1) or [(x, y)], 3)
        results.append((len(calls), model.embeddings.clone()))
    assert [n for n, _ in results] == [1, 3]
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize("embeddings,fallback", [("per-class", "image-mean"), ("agnostic", "class-mean")])
def test_fallback_and_agnostic_pairs_match_their_definition(embeddings, fallback):
    """image-mean: a class without images gets the mean over all images of their side means;
    agnostic: every class gets that pair (float64 reference, no refinement round)."""
    from cream_rt.train.refine import embedding_pass

    torch.manual_seed(2)
    model = create_model("small-cnn", 4, input_size=32,
                         cream=CreamConfig(embeddings=embeddings, fallback=fallback)).eval()
    x = torch.randn(7, 3, 32, 32)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 2])  # class 0 has most images: the two pairs differ
    with torch.no_grad():
        features = model.features(x).numpy()
        cams = model.cam(torch.from_numpy(features), labels).numpy()
    cam_n = np.stack([(c - c.min()) / (c.max() - c.min()) for c in cams.reshape(7, -1).astype(np.float64)])
    want = _np_side_class_means(features, (cam_n >= 0.2).astype(np.float64), labels.numpy(),
                                model.embeddings.numpy(), True, None, "image-mean")
    assert not np.allclose(want[3], want[:3].mean(0), atol=1e-3)  # the class mean would differ
    if embeddings == "agnostic":
        want[:] = want[3]  # the image-mean pair for every class
    record = embedding_pass(model, lambda: [(x, labels)], False, 0)
    np.testing.assert_allclose(model.embeddings.numpy(), want, atol=1e-5)
    assert record["fallback_classes"] == 1 and record["embeddings"] == embeddings
