"""CREAM with a box regressor: box <-> fraction conversion and box-only scoring against
hand-computed cases, then the whole path from the CLI (train, train-regressor, export with the
regressor, localize, eval, parity) on a tiny synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cream_rt.boxes import box_to_fractions, fractions_to_box
from cream_rt.metadata import SplitMetadata
from cream_rt.scoring import SplitScorer


def test_box_fraction_round_trip_hand_computed():
    assert box_to_fractions([0, 0, 9, 19], 10, 20) == [0.0, 0.0, 1.0, 1.0]
    assert box_to_fractions([2, 4, 5, 9], 10, 20) == [0.2, 0.2, 0.6, 0.5]
    assert fractions_to_box([0.2, 0.2, 0.6, 0.5], 10, 20) == [2, 4, 5, 9]
    assert fractions_to_box([0.2, 0.2, 0.6, 0.5], 100, 200) == [20, 40, 59, 99]
    assert fractions_to_box([-0.5, 0.99, 2.0, 0.99], 10, 20) == [0, 19, 9, 19]  # clipped, at least one pixel
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 300, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        assert fractions_to_box(box_to_fractions([x0, y0, x1, y1], w, h), w, h) == [x0, y0, x1, y1]


def test_regressor_boxes_scored_as_boxes():
    """Two 10x10 images, GT [0,0,4,4] each. Image a: box [0,0,4,4] (IoU 1); image b: box
    [0,0,4,9] (IoU 25/50 = 0.5). MaxBoxAccV2 = mean(100, 100, 50) = 83.33; GT-known 100;
    with logits right for a only, Top-1 Loc 50."""
    meta = SplitMetadata(root=None, image_ids=["a", "b"], class_labels={"a": 0, "b": 1},
                         image_sizes={"a": (10, 10), "b": (10, 10)},
                         boxes={"a": [(0, 0, 4, 4)], "b": [(0, 0, 4, 4)]})
    scorer = SplitScorer(meta, 10, 0.01)
    boxes = np.array([box_to_fractions([0, 0, 4, 4], 10, 10), box_to_fractions([0, 0, 4, 9], 10, 10)])
    logits = np.array([[2.0, 0.0], [3.0, 0.0]])
    scorer.add_boxes(["a", "b"], logits, boxes)
    out = scorer.result()
    assert out["MaxBoxAccV2"] == pytest.approx(250 / 3) and out["GT_known_Loc"] == 100.0
    assert out["Top1_Loc"] == 50.0 and out["box_source"] == "regressor"
    no_classes = SplitScorer(meta, 10, 0.01)
    no_classes.add_boxes(["a", "b"], None, boxes)
    assert "Top1_Loc" not in no_classes.result() and "classification_top1" not in no_classes.result()


def test_cli_regressor_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cream_rt.cli import main

    data, ckpt, reg, onnx_path = tmp_path / "synth", tmp_path / "m.pt", tmp_path / "reg.pt", tmp_path / "m.onnx"
    assert main(["synth", "--out", str(data), "--train", "48", "--val", "12", "--test", "12", "--classes", "3",
                 "--size", "64"]) == 0
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "16",
                 "--input-size", "64", "--bn-batches", "1"]) == 0
    assert main(["train-regressor", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(reg),
                 "--epochs", "1", "--batch-size", "16", "--json"]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--regressor", str(reg), "--out", str(onnx_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][-1] == "boxes"

    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt), "--regressor", str(reg), "--data", str(data), "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert exported["regressor"]["box_source"] == "regressor"
    assert exported["regressor"]["GT_known_Loc"] == eager["regressor"]["GT_known_Loc"]
    assert exported["MaxBoxAccV2"] == eager["MaxBoxAccV2"]  # the maps are scored as before

    assert main(["parity", "--checkpoint", str(ckpt), "--model", str(onnx_path), "--regressor", str(reg),
                 "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regressor_boxes_max_abs_diff"] < 1e-5
    assert main(["parity", "--checkpoint", str(ckpt), "--model", str(onnx_path), "--data", str(data)]) == 2
    assert "pass the file it was exported with" in capsys.readouterr().err

    image = data / "images" / (data / "metadata" / "test" / "image_ids.txt").read_text().split()[0]
    out = tmp_path / "r.jsonl"
    assert main(["localize", str(image), "--model", str(onnx_path), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["box_source"] == "regressor" and len(record["boxes"]) == 1
    x0, y0, x1, y1 = record["boxes"][0]
    assert 0 <= x0 <= x1 < record["image_size"][0] and 0 <= y0 <= y1 < record["image_size"][1]

    assert main(["export", "--checkpoint", str(ckpt), "--regressor", str(ckpt), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a cream box regressor" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
