"""The accuracy suite's pieces: a cell's rows from cached features equal `cream eval` on the
same fitted checkpoint (images through the eager predictor), the default-change rule on a
hand-made summary, cell names, and a synthetic cell cut off mid-training resumes."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from cli_helpers import run  # noqa: E402

from bench import accuracy  # noqa: E402

TINY = accuracy.SynthRecipe(image_size=48, input_size=48, epochs=2, lr_decay_epochs=(1,), train=24, val=12, test=12)


def test_cell_rows_equal_cream_eval(tmp_path, monkeypatch):
    """CAM and the default setting of a synthetic cell, val and test, as `cream eval` scores the
    checkpoint the cell fitted."""
    from cream_rt.model.checkpoint import save_checkpoint
    from cream_rt.train.tune import score

    monkeypatch.setattr(accuracy, "SYNTH_RECIPES", {"small-cnn": TINY})
    cell = accuracy.Cell("synth-default-small-cnn-s0", tmp_path)
    setting = accuracy.shipped("small-cnn")
    row = cell.row(setting)
    save_checkpoint(tmp_path / "fitted.pt", cell.fitted(setting))
    for split in ("val", "test"):
        for mode, want in (("cream", row[split]), ("cam", None)):
            out = json.loads(run("eval", "--checkpoint", tmp_path / "fitted.pt", "--data", cell.root, "--split",
                                 split, "--mode", mode, "--json", expect=0).stdout)
            if want is None:
                want = score(None, cell.splits[split])
            assert want["MaxBoxAccV2"] == pytest.approx(out["MaxBoxAccV2"])
            assert want["GT_known_Loc"] == pytest.approx(out["GT_known_Loc"])
    again = accuracy.Cell("synth-default-small-cnn-s0", tmp_path)  # from the cache file, read without unpickling
    assert again.row(setting) == row


def test_default_rule_hand_made_summary():
    """>= 1 on the mean over the real val groups, none below -0.5, no synthetic group below CAM."""
    def group(real, gain, cam=40.0):
        rows = {"CAM": {"val": {"MaxBoxAccV2": cam}}, "old": {"val": {"MaxBoxAccV2": 50.0}},
                "new": {"val": {"MaxBoxAccV2": 50.0 + gain}}}
        return {"real": real, "seeds": [0, 1, 2], "rows": rows}

    def rule(groups):
        return accuracy.default_rule(groups, "new", "old", ("b",))

    passing = {"a/b": group(True, 2.0), "c/b": group(True, 0.5), "synth-x/b": group(False, 5.0)}
    assert rule(passing)["verdict"] == "passes" and rule(passing)["mean_gain"] == pytest.approx(1.25)
    assert rule({**passing, "c/b": group(True, -0.6)})["verdict"] == "fails"  # a real group loses > 0.5
    assert rule({"a/b": group(True, 0.9)})["verdict"] == "fails"  # mean short
    below = rule({**passing, "synth-y/b": group(False, -20.0, cam=45.0)})  # 30 < CAM 45
    assert below["verdict"] == "fails" and below["synthetic_below_cam"] == ["synth-y/b"]
    missing = {**passing, "synth-z/b": {"real": False, "seeds": [0], "rows": {"CAM": {"val": {"MaxBoxAccV2": 1}}}}}
    assert rule(missing)["verdict"].startswith("open")
    assert accuracy.default_rule(passing, "absent", "old", ("b",)) is None


def test_cell_names():
    assert accuracy.parse_cell("rk-efficientnet-lite0-s2") == ("rk", "efficientnet-lite0", 2)
    assert accuracy.parse_cell("synth-small-small-cnn-s1") == ("synth-small", "small-cnn", 1)
    assert accuracy.parse_cell("ilsvrc-disjoint-efficientnet-lite2") == ("ilsvrc-disjoint", "efficientnet-lite2", 0)
    assert accuracy.parse_cell("fruits-efficientnet-lite0-s1") == ("fruits", "efficientnet-lite0", 1)
    for bad in ("rk-vgg16-s0", "synth-nope-small-cnn-s0", "ilsvrc", "ilsvrc-disjoint", "ilsvrc-own-small-cnn"):
        with pytest.raises(ValueError):
            accuracy.parse_cell(bad)
    assert len(accuracy.cell_names("real")) == 15 and len(accuracy.cell_names("synthetic")) == 36


def test_a_synthetic_cell_cut_off_after_an_epoch_resumes_its_training(tmp_path, monkeypatch):
    from cream_rt.synth import generate, preset
    from cream_rt.train.trainer import TrainConfig, train

    monkeypatch.setattr(accuracy, "SYNTH_RECIPES", {"small-cnn": TINY})
    data = tmp_path / "data-default-48-s0"
    generate(data, preset("default", size=48, train=24, val=12, test=12, seed=0), show_progress=False)
    (tmp_path / "default-small-cnn-s0").mkdir()
    ckpt = tmp_path / "default-small-cnn-s0" / "model.pt"
    train("small-cnn", str(data), str(ckpt), config=TrainConfig(epochs=1, seed=0, lr_decay_epochs=(1,)),
          input_size=48)
    accuracy.synth_cell("default", "small-cnn", 0, tmp_path)
    training = torch.load(ckpt, weights_only=True)["training"]
    assert training["epoch"] == 2 and len(training["history"]) == 2
