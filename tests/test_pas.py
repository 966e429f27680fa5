"""RCAM's percentile as a standard (PaS): box thresholds as fractions of each map's 90th
percentile, in the evaluator, the runtime and exports, against the plain reference of
bench/reference_protocol.py (its percentile sorted and interpolated by hand)."""
from __future__ import annotations

import numpy as np
import pytest
from adversarial_maps import KINDS, make_map, random_gt_boxes

from bench.reference_protocol import percentile90, reference_boxes, reference_max_box_acc
from cream_rt.boxes import map_boxes, quantize, reference_level
from cream_rt.metrics import BoxEvaluator


def _maps(count: int, seed: int):
    rng = np.random.default_rng(seed)
    maps = [make_map(KINDS[k % len(KINDS)], 32, 40, rng) for k in range(count)]
    return maps, [random_gt_boxes(32, 40, rng, many=True) for _ in maps]


def test_percentile_by_hand_equals_reference_level():
    rng = np.random.default_rng(0)
    for shape in ((7, 9), (224, 224), (1, 1)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert reference_level(img, pas=True) == pytest.approx(percentile90(img), abs=1e-9)
    img = np.zeros((10, 10), np.uint8)
    img[0, :5] = 200  # 5% of the pixels: the 90th percentile is 0, every nonzero pixel is foreground
    assert reference_level(img, pas=True) == 0 and reference_level(img) == 200


@pytest.mark.parametrize("interval", [0.01, 0.05])
def test_pas_evaluator_equals_reference(interval):
    maps, gts = _maps(60, 1)
    evaluator = BoxEvaluator(interval, (32, 40), pas=True)
    for m, g in zip(maps, gts):
        evaluator.add(m, g)
    out = evaluator.result()
    ref_v2 = reference_max_box_acc(maps, [g.tolist() for g in gts], interval, all_contours=True, pas=True)
    ref_v1 = reference_max_box_acc(maps, [g.tolist() for g in gts], interval, all_contours=False, pas=True)
    assert out["MaxBoxAccV2"] == ref_v2["mean"]
    assert out["MaxBoxAccV2_thresholds"] == {str(k): v for k, v in ref_v2["thresholds"].items()}
    assert out["MaxBoxAcc"] == ref_v1["per_iou"][50]
    assert out["threshold_reference"] == "percentile90"
    plain = BoxEvaluator(interval, (32, 40))
    for m, g in zip(maps, gts):
        plain.add(m, g)
    assert plain.result()["MaxBoxAccV2"] == reference_max_box_acc(
        maps, [g.tolist() for g in gts], interval, all_contours=True)["mean"]


def test_pas_runtime_boxes_equal_reference():
    maps, _ = _maps(40, 2)
    differ = 0
    for m in maps:
        for all_contours in (False, True):
            got = map_boxes(m, 0.35, all_contours, pas=True).tolist()
            assert got == reference_boxes(m, 0.35, all_contours, pas=True)
        img = quantize(m)
        differ += int(reference_level(img, True)) != int(img.max())
    assert differ > 10  # the two standards really differ on these maps


def test_pas_goes_through_export_to_the_localizer(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cream_rt.export.onnx_export import export_model
    from cream_rt.model import create_model
    from cream_rt.runtime import Localizer, OnnxPredictor

    torch.manual_seed(0)
    model = create_model("small-cnn", 3, input_size=48, pas=True).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    assert export_model(model, tmp_path / "m.onnx").pas
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    with Localizer.load(tmp_path / "m.onnx") as loc:
        assert loc.pas and loc.threshold == 0.35
        result = loc([image], return_maps=True)[0]
    assert result.boxes == [[float(v) for v in b] for b in reference_boxes(result.map, 0.35, False, pas=True)]
    _, maps = OnnxPredictor.load(tmp_path / "m.onnx")(np.zeros((1, 3, 48, 48), np.float32))
    assert maps.shape == (1, 48, 48)
