"""End to end on a tiny synthetic set: synth, train, resume, fit-embeddings, eval --checkpoint,
checkpoint safety, and the torch-free import of the runtime package."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cream_rt.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = root / "synth"
    assert main(["synth", "--out", str(data), "--train", "96", "--val", "24", "--test", "24", "--classes", "3"]) == 0
    ckpt = root / "m.pt"
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "16"]) == 0
    return data, ckpt


def test_synth_is_deterministic(tmp_path):
    from cream_rt.synth import SynthConfig, make_example

    a = make_example(1, np.random.default_rng([3, 0]), SynthConfig(size=64))
    b = make_example(1, np.random.default_rng([3, 0]), SynthConfig(size=64))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[1].sum() > 0.05 * 64 * 64  # the object (body + head) is large, not a small part
    assert SynthConfig().classes == 6


def test_synth_decoy_heads_lie_off_the_object():
    from cream_rt.synth import SynthConfig, class_color, make_example

    drawn, colours = 0, set()
    for seed in range(6):  # up to 3 decoys each: some draws have none
        plain, mask = make_example(2, np.random.default_rng([seed, 0]), SynthConfig(decoys=0))
        with_decoys, mask2 = make_example(2, np.random.default_rng([seed, 0]), SynthConfig(decoys=3))
        assert np.array_equal(mask, mask2)  # decoys never change the object or its mask
        changed = (plain != with_decoys).any(axis=2)
        assert not (changed & (mask > 0)).any()
        drawn += bool(changed.any())
        colours |= {tuple(int(v) for v in px) for px in with_decoys[changed]}
    assert drawn >= 3
    # what was drawn are heads of other classes: their colours, never the object's own
    others = {class_color(c) for c in range(6) if c != 2}
    assert colours & others and class_color(2) not in colours


def test_precise_batchnorm_statistics_are_the_plain_average():
    from cream_rt.train.trainer import recalibrate_batchnorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(2)

        def features(self, x):
            return self.bn(x)

    net = Net()
    batches = [(torch.full((4, 2, 3, 3), float(v)) + torch.arange(4.0).view(4, 1, 1, 1), 0) for v in (1, 5, 9)]
    recalibrate_batchnorm(net, batches, 2, "cpu")  # only the first two batches count
    # batch means 2.5 and 6.5; each batch's unbiased variance of 0..3 offsets is 1.25 * 36/35
    assert torch.allclose(net.bn.running_mean, torch.tensor([4.5, 4.5]))
    assert torch.allclose(net.bn.running_var, torch.full((2,), 1.25 * 36 / 35))
    assert net.bn.momentum == 0.1


def test_train_writes_loadable_checkpoint(tiny):
    from cream_rt.model.checkpoint import load_checkpoint

    data, ckpt = tiny
    model, payload = load_checkpoint(ckpt)
    assert model.config.backbone == "small-cnn" and model.config.num_classes == 3
    assert model.embeddings.shape == (3, 2, model.backbone.out_channels)
    assert payload["training"]["epoch"] == 1 and "val_MaxBoxAccV2_cream" in payload["training"]["history"][0]


def test_resume_continues(tiny, tmp_path):
    data, ckpt = tiny
    out = tmp_path / "r.pt"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "16",
                 "--resume", str(ckpt)]) == 0
    payload = torch.load(out, weights_only=True)
    assert [h["epoch"] for h in payload["training"]["history"]] == [1, 2]


def test_fit_embeddings_changes_only_embeddings(tiny, tmp_path):
    data, ckpt = tiny
    out = tmp_path / "fit.pt"
    assert main(["fit-embeddings", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--estimate", "momentum"]) == 0
    a = torch.load(ckpt, weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert not torch.equal(a["embeddings"], b["embeddings"])
    assert all(torch.equal(a[k], b[k]) for k in a if k != "embeddings")


def test_train_ends_with_the_embedding_pass(tiny, tmp_path):
    """`cream train` ends with the embedding pass: its record is in the last epoch's history, the
    center follows the backbone (off for small-cnn unless --center; then the feature center is the
    training split's mean feature, computed here in float64 from the final weights), and
    `fit-embeddings --estimate pass` on the checkpoint gives the same embeddings."""
    from cream_rt.config import REFINE_ROUNDS as REFINE_ROUNDS_DEFAULT
    from cream_rt.metadata import read_split
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.train.data import WsolImages
    from cream_rt.train.trainer import TrainConfig

    assert REFINE_ROUNDS_DEFAULT == TrainConfig().refine_rounds
    data, ckpt = tiny
    model, payload = load_checkpoint(ckpt)
    record = payload["training"]["history"][-1]["embedding_pass"]
    assert record["center"] is False and record["refine_rounds"] == REFINE_ROUNDS_DEFAULT
    assert model.config.cream.center is False and not model.feature_center.any()
    centered_ckpt = tmp_path / "centered.pt"
    assert main(["train", "--data", str(data), "--out", str(centered_ckpt), "--epochs", "1", "--batch-size", "16",
                 "--center"]) == 0
    centered_model, _ = load_checkpoint(centered_ckpt)
    assert centered_model.config.cream.center is True
    images = WsolImages(read_split(data / "metadata" / "train", require_localization=False), data / "images",
                        model.config.input_size, model.config.mean, model.config.std, train=False)
    with torch.no_grad():
        feats = torch.cat([centered_model.features(torch.stack([images[i][0]
                                                                for i in range(j, min(j + 32, len(images)))]))
                           for j in range(0, len(images), 32)]).double()
    want = feats.transpose(0, 1).reshape(feats.shape[1], -1).mean(1)
    np.testing.assert_allclose(centered_model.feature_center.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    out = tmp_path / "pass.pt"
    assert main(["fit-embeddings", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--estimate", "pass", "--refine", str(REFINE_ROUNDS_DEFAULT)]) == 0
    again, _ = load_checkpoint(out)
    np.testing.assert_allclose(again.embeddings.numpy(), model.embeddings.numpy(), atol=1e-5)
    plain = tmp_path / "plain.pt"
    assert main(["train", "--data", str(data), "--out", str(plain), "--epochs", "1", "--batch-size", "16",
                 "--no-embedding-pass"]) == 0
    payload = torch.load(plain, weights_only=True)
    assert "embedding_pass" not in payload["training"]["history"][-1]
    assert not torch.equal(payload["state_dict"]["embeddings"], model.embeddings)


def test_eval_checkpoint_json(tiny, capsys):
    data, ckpt = tiny
    for mode in ("cam", "cream"):
        assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "test",
                     "--mode", mode, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["num_images"] == 24 and 0 <= out["MaxBoxAccV2"] <= 100
        assert set(out["MaxBoxAccV2_per_iou"]) == {"30", "50", "70"} and "Top1_Loc" in out


def test_bad_checkpoints(tmp_path, tiny, capsys):
    data, _ = tiny
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    for path, message in [(bad, "not a readable cream checkpoint"), (tmp_path / "none.pt", "checkpoint not found")]:
        assert main(["eval", "--checkpoint", str(path), "--data", str(data), "--json"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "other.pt"), "--data", str(data)]) == 2
    assert "not a cream checkpoint" in capsys.readouterr().err


def test_runtime_import_does_not_import_torch_or_ray():
    code = ("import sys, cream_rt, cream_rt.metrics, cream_rt.evaluate, cream_rt.cli, cream_rt.runtime, "
            "cream_rt.ray_localize, cream_rt.shards; print(sorted({'torch', 'ray', 'pyarrow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_subcommand_has_help():
    from cream_rt.cli import COMMANDS, build_parser

    build_parser()
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "cream_rt.cli", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: cream" in out.stdout


@pytest.mark.parametrize("feature_mean,fg,bg", [("raw", [1.5, 2.0], [0.5, 0.0]), ("unit", [0.3, 0.4], [0.5, 0.0])])
def test_embedding_update_hand_computed(feature_mean, fg, bg):
    """Pixel 0 = (3, 4) has CAM 3 (foreground), pixel 1 = (1, 0) has CAM 1 (background); lambda 0.5
    from zero embeddings: V = 0.5 * mean, of the raw or of the L2-normalised features."""
    from cream_rt.config import CreamConfig
    from cream_rt.model.network import create_model

    model = create_model("small-cnn", 2, input_size=32, cream=CreamConfig(momentum=0.5, feature_mean=feature_mean))
    k = model.backbone.out_channels
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[0, 0] = 1.0
        model.embeddings.zero_()
    features = torch.zeros(1, k, 1, 2)
    features[0, 0, 0, 0], features[0, 1, 0, 0], features[0, 0, 0, 1] = 3.0, 4.0, 1.0
    model.update_embeddings(features, torch.tensor([0]))
    np.testing.assert_allclose(model.embeddings[0, 0, :2].numpy(), fg, atol=1e-6)
    np.testing.assert_allclose(model.embeddings[0, 1, :2].numpy(), bg, atol=1e-6)
    assert float(model.embeddings[1].abs().max()) == 0.0  # other classes untouched


def test_feature_mean_option_end_to_end(tiny, tmp_path, capsys):
    from cream_rt.config import CreamConfig

    data, ckpt = tiny
    assert torch.load(ckpt, weights_only=True)["config"]["cream"]["feature_mean"] == "unit"  # the default
    out = tmp_path / "raw.pt"
    assert main(["fit-embeddings", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--feature-mean", "raw", "--estimate", "momentum"]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["config"]["cream"]["feature_mean"] == "raw"
    assert payload["training"]["fit_embeddings"]["feature_mean"] == "raw"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["MaxBoxAccV2"] <= 100
    with pytest.raises(ValueError, match="feature_mean must be one of"):
        CreamConfig(feature_mean="mean")


def test_checkpoint_saved_before_feature_mean_loads_as_raw(tiny, tmp_path):
    """A checkpoint written before `feature_mean` existed (no field) keeps its raw-mean EM: same
    maps as the model with feature_mean 'raw', different from 'unit'."""
    from cream_rt.model.checkpoint import load_checkpoint

    _, ckpt = tiny
    payload = torch.load(ckpt, weights_only=True)
    for name in ("feature_mean", "center"):  # neither field existed then, nor the center buffer
        del payload["config"]["cream"][name]
    del payload["state_dict"]["feature_center"]
    del payload["state_dict"]["embedding_fitted"]
    torch.save({**payload, "version": 1}, tmp_path / "old.pt")
    old, _ = load_checkpoint(tmp_path / "old.pt")
    assert old.config.cream.feature_mean == "raw" and old.config.cream.center is False
    assert float(old.feature_center.abs().max()) == 0.0 and bool(old.embedding_fitted.all())
    unit, _ = load_checkpoint(ckpt)
    unit.config = unit.config.with_cream(center=False)
    x = torch.randn(2, 3, unit.config.input_size, unit.config.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps_old = old(x, mode="cream", iterations=3)[1]
        unit.config = unit.config.with_cream(feature_mean="raw")
        maps_raw = unit(x, mode="cream", iterations=3)[1]
        unit.config = unit.config.with_cream(feature_mean="unit")
        maps_unit = unit(x, mode="cream", iterations=3)[1]
    assert torch.equal(maps_old, maps_raw) and float((maps_old - maps_unit).abs().max()) > 1e-4


def test_train_with_pas_reaches_eval_and_export(tiny, tmp_path, capsys):
    """`cream train --pas` is kept in the checkpoint; eval scores with it unless --no-pas, and
    the export's manifest carries it to the runtime."""
    data, _ = tiny
    ckpt = tmp_path / "pas.pt"
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "16", "--pas"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json"]) == 0
    with_pas = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--no-pas", "--json"]) == 0
    without = json.loads(capsys.readouterr().out)
    assert with_pas["threshold_reference"] == "percentile90" and without["threshold_reference"] == "max"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pas.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pas"] is True
