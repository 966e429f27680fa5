"""The accuracy suite's pieces: oracle centroids (hand-computed), the CAM and CREAM rows equal
`cream eval` on the same checkpoint, and the summary's target verdicts."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cream_rt.bench.accuracy import oracle_centroids, score_cell, summarize  # noqa: E402
from cream_rt.cli import main  # noqa: E402


def test_oracle_centroids_hand_computed():
    # 2 channels, 3 pixels: (3,4) and (0,2) inside the mask, (1,0) outside, (mask 0.3: neither)
    features = torch.tensor([[[3.0, 0.0, 1.0, 5.0], [4.0, 2.0, 0.0, 5.0]]]).reshape(1, 2, 1, 4)
    masks = torch.tensor([[1.0, 0.9, 0.0, 0.3]])
    raw = oracle_centroids(features, masks, unit=False)
    np.testing.assert_allclose(raw[0].numpy(), [[1.5, 3.0], [1.0, 0.0]], atol=1e-6)
    unit = oracle_centroids(features, masks, unit=True)
    np.testing.assert_allclose(unit[0].numpy(), [[0.3, 0.9], [1.0, 0.0]], atol=1e-5)


def test_summary_targets():
    def cell(seed, cam, cream, z_in, z_out):
        rows = {"CAM": {"MaxBoxAccV2": cam, "GT_known_Loc": cam, "inside": 0.5, "outside": 0.1,
                        "classification_top1": 90.0},
                "CREAM T=2": {"MaxBoxAccV2": cream, "GT_known_Loc": cream, "inside": 0.6, "outside": 0.2},
                "oracle EM T=1": {"MaxBoxAccV2": 80.0, "GT_known_Loc": 80.0, "z_inside": z_in, "z_outside": z_out}}
        return {"preset": "p", "backbone": f"b{z_in}", "seed": seed, "rows": rows}

    separable = summarize([cell(0, 40.0, 44.0, 0.8, 0.2), cell(1, 42.0, 44.0, 0.8, 0.3)])["p/b0.8"]
    assert separable["gain_T2_over_CAM"] == pytest.approx(3.0) and separable["target"] == ">= +3"
    assert separable["target_met"] and separable["oracle_separation"] == pytest.approx(0.55)
    inseparable = summarize([cell(0, 40.0, 38.5, 0.3, 0.2)])["p/b0.3"]
    assert inseparable["target"] == ">= -1" and not inseparable["target_met"]


def test_cam_and_cream_rows_equal_cream_eval(tmp_path, capsys):
    """The suite scores every row from one backbone pass; its CAM and CREAM T=2 rows must be the
    numbers `cream eval --checkpoint` gives through the eager predictor."""
    from cream_rt.model.checkpoint import save_checkpoint
    from cream_rt.model.network import create_model

    data = tmp_path / "d"
    assert main(["synth", "--out", str(data), "--train", "6", "--val", "6", "--test", "30", "--classes", "3",
                 "--size", "64"]) == 0
    torch.manual_seed(0)
    model = create_model("small-cnn", 3, input_size=64).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    save_checkpoint(tmp_path / "m.pt", model)
    rows = score_cell(tmp_path / "m.pt", tmp_path / "m.pt", data, batch_size=7)
    capsys.readouterr()
    for mode, row in (("cam", "CAM"), ("cream", "CREAM T=2")):
        assert main(["eval", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(data), "--mode", mode,
                     "--iterations", "2", "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)
        assert rows[row]["MaxBoxAccV2"] == pytest.approx(expected["MaxBoxAccV2"])
        assert rows[row]["GT_known_Loc"] == pytest.approx(expected["GT_known_Loc"])
    assert rows["CREAM raw T=2"]["MaxBoxAccV2"] != rows["CREAM T=2"]["MaxBoxAccV2"] or \
        rows["CREAM raw T=2"]["inside"] != rows["CREAM T=2"]["inside"]  # raw means: another M-step
    assert rows["CAM"]["calibration_flips"] == 0 and 0 <= rows["CREAM T=2"]["calibration_flips"] <= 1
    for row in rows.values():
        assert 0 <= row["inside"] <= 1 and 0 <= row["outside"] <= 1


def test_default_rule_hand_made_summary():
    """The team's rule (>= 1 on the mean, no cell below -0.5, 3 seeds, every preset and backbone):
    a settled cell's loss fails a row at once; a gain on an incomplete suite stays open; the
    complete suite passes or fails on its mean."""
    from cream_rt.bench.accuracy import RECIPES, SUITES, default_rule

    def summary(gains, seeds=(0, 1, 2)):
        return {key: {"seeds": list(seeds), "rows": {"CREAM T=2": {"MaxBoxAccV2": 50.0},
                                                     "x": {"MaxBoxAccV2": 50.0 + gain}}}
                for key, gain in gains.items()}

    keys = [f"{p}/{b}" for p in SUITES["default"] for b in RECIPES]
    assert default_rule(summary(dict.fromkeys(keys, 1.5)), "x")["verdict"] == "passes"
    assert default_rule(summary(dict.fromkeys(keys, 0.9)), "x")["verdict"] == "fails"  # mean short
    losing = summary({**dict.fromkeys(keys, 3.0), keys[0]: -0.6})
    rule = default_rule(losing, "x")
    assert rule["verdict"] == "fails" and rule["worst_cell"] == keys[0] and rule["worst_gain"] == pytest.approx(-0.6)
    assert rule["worst_settled_cell"] == keys[0]
    assert default_rule(summary(dict.fromkeys(keys[:3], 5.0)), "x")["verdict"].startswith("open")
    assert default_rule(summary(dict.fromkeys(keys, 5.0), seeds=(0,)), "x")["verdict"].startswith("open")
    assert default_rule(summary({keys[0]: -3.0}, seeds=(0,)), "x")["verdict"].startswith("open")  # one seed
    assert default_rule(summary(dict.fromkeys(keys, 1.5)), "missing") is None


def test_a_cell_cut_off_after_an_epoch_resumes_its_training(tmp_path, monkeypatch):
    """Each epoch's checkpoint is written; a cell stopped after epoch 1 of 2 is trained on from it
    (not scored as if done)."""
    from cream_rt.bench import accuracy
    from cream_rt.synth import generate, preset
    from cream_rt.train.trainer import TrainConfig, train

    recipe = accuracy.CellRecipe(image_size=48, input_size=48, epochs=2, lr_decay_epochs=(1,), train=24, val=6,
                                 test=6)
    monkeypatch.setattr(accuracy, "RECIPES", {"small-cnn": recipe})
    monkeypatch.setattr(accuracy, "REFINE_ROUNDS", (1,))
    data = tmp_path / "data-default-48-s0"
    generate(data, preset("default", size=48, train=24, val=6, test=6, seed=0), show_progress=False)
    cell = tmp_path / "default-small-cnn-s0"
    cell.mkdir()
    train("small-cnn", str(data), str(cell / "model.pt"), config=TrainConfig(epochs=1, seed=0, lr_decay_epochs=(1,)),
          input_size=48, log=lambda line: None)
    accuracy.run_cell("default", "small-cnn", 0, tmp_path, log=lambda line: None)
    training = torch.load(cell / "model.pt", weights_only=True)["training"]
    assert training["epoch"] == 2 and len(training["history"]) == 2
