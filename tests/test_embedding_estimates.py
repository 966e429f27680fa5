"""bench/embedding_estimates.py's bookkeeping on hand-made cells: the `default` row follows the
backbone's spec, the means over seeds, issue 23's targets and the default rule's verdicts are the
hand-computed ones."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
from cream_rt.bench.accuracy import SUITES, default_rule  # noqa: E402
from cream_rt.bench.embedding_estimates import default_estimate, summarize, targets  # noqa: E402


def _cell(preset: str, backbone: str, seed: int, cam: float, oracle: float, momentum: float, pass_r1: float,
          center_r1: float) -> dict:
    scores = {"CAM": cam, "oracle EM T=1": oracle, "momentum": momentum, "pass R=1": pass_r1,
              "center R=1": center_r1}
    return {"preset": preset, "backbone": backbone, "seed": seed,
            "rows": {name: {"MaxBoxAccV2": v} for name, v in scores.items()}}


def test_default_row_follows_the_backbone_spec():
    assert default_estimate("small-cnn") == "pass R=1"
    assert default_estimate("efficientnet-lite0") == "pass R=1 em_layer=_blocks.5"
    assert default_estimate("resnet50") == "center R=1"


def test_means_targets_and_rule_by_hand():
    cells = [_cell("default", "resnet50", s, 20.0, 60.0, 30.0, 31.0 + s, 36.0 + s) for s in (0, 1, 2)]
    summary = summarize(cells)
    rows = summary["default/resnet50"]["rows"]
    assert rows["default"]["MaxBoxAccV2"] == pytest.approx(37.0)  # center R=1 on ResNet50: mean of 36, 37, 38
    assert rows["pass R=1"]["MaxBoxAccV2"] == pytest.approx(32.0)
    t = targets(summary)["default/resnet50"]
    assert t["gain"] == pytest.approx(17.0) and t["oracle_gain"] == pytest.approx(40.0)
    assert t["fraction"] == pytest.approx(17.0 / 40.0) and t["meets_5"] is True
    one_backbone = ("resnet50",)
    verdict = default_rule(summary, "default", "momentum", one_backbone)
    assert verdict["mean_gain"] == pytest.approx(7.0)
    assert verdict["verdict"].startswith("open")  # the other presets are missing
    full = summarize([dict(c, preset=p) for p in SUITES["default"] for c in cells])
    assert default_rule(full, "default", "momentum", one_backbone)["verdict"] == "passes"
    losing = [_cell("tinted", "resnet50", s, 20.0, 25.0, 30.0, 30.0, 29.4) for s in (0, 1, 2)]
    mixed = summarize(cells + losing)
    v = default_rule(mixed, "default", "momentum", one_backbone)
    assert v["worst_cell"] == "tinted/resnet50" and v["worst_gain"] == pytest.approx(-0.6)
    assert v["verdict"] == "fails"  # a settled cell loses more than 0.5
    small_oracle = targets(mixed)["tinted/resnet50"]
    assert small_oracle["fraction"] == pytest.approx(9.4 / 5.0) and small_oracle["meets_5"] is None



def test_rows_of_another_layer_keep_their_layer_and_the_previous_default():
    """A row's `em_layer` (a string) is kept out of the means; PREVIOUS_ROW is the 2026-12-05
    default of each backbone, and the rule compares the shipped default with it."""
    from cream_rt.bench.embedding_estimates import PREVIOUS_ROW, previous_estimate, rule_rows

    cells = []
    for s in (0, 1):
        cell = _cell("default", "small-cnn", s, 20.0, 60.0, 30.0, 31.0 + s, 36.0)
        cell["rows"]["pass R=1"].update(em_layer="cam", oracle_em_layer=70.0 + s)
        cells.append(cell)
    rows = summarize(cells)["default/small-cnn"]["rows"]
    assert previous_estimate("small-cnn") == "pass R=1" and previous_estimate("efficientnet-lite0") == "center R=1"
    assert rows[PREVIOUS_ROW]["MaxBoxAccV2"] == pytest.approx(31.5)
    assert rows["pass R=1"]["oracle_em_layer"] == pytest.approx(70.5) and "em_layer" not in rows["pass R=1"]
    assert ("default", PREVIOUS_ROW) in rule_rows(list(rows), ("small-cnn",))
