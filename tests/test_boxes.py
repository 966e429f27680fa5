"""Box extraction and IoU against the plain per-threshold reference and hand-computed cases."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from adversarial_maps import KINDS, make_map, random_gt_boxes

from bench.reference_protocol import reference_boxes, reference_iou
from cream_rt import box_sweep as S
from cream_rt import boxes as B


def test_iou_hand_computed():
    # docs/evaluation.md: boxes [1,2,5,6] and [3,1,4,5] have IoU 8/27
    assert B.iou_matrix(np.array([[1, 2, 5, 6]]), np.array([[3, 1, 4, 5]]))[0, 0] == 8 / 27
    assert reference_iou([1, 2, 5, 6], [3, 1, 4, 5]) == 8 / 27
    # a single pixel is a box of area 1 with the +1 convention
    assert B.iou_matrix(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 1, 1]]))[0, 0] == 1 / 4
    assert B.iou_matrix(np.array([[0, 0, 3, 3]]), np.array([[5, 5, 6, 6]]))[0, 0] == 0.0


def test_box_semantics_hand_computed():
    m = np.zeros((10, 12), np.float32)
    m[2:5, 3:7] = 1.0  # rows 2..4, cols 3..6
    img = B.quantize(m)
    # boundingRect (3, 2, 4, 3) -> [3, 2, 3+4, 2+3]: the protocol's exclusive end
    assert B.boxes_at_threshold(img, 0, True).tolist() == [[3, 2, 7, 5]]
    m[:, :] = 0
    m[7:, 9:] = 1.0  # touches the bottom-right border: end clipped to W-1, H-1
    assert B.boxes_at_threshold(B.quantize(m), 0, True).tolist() == [[9, 7, 11, 9]]
    assert B.boxes_at_threshold(np.zeros((5, 5), np.uint8), 0, True).tolist() == [[0, 0, 0, 0]]


def test_strict_threshold_and_quantisation():
    m = np.array([[0.5, 1.0], [0.2, 0.0]], np.float32)
    img = B.quantize(m)  # floor(m*255): 127, 255, 51, 0
    assert img.tolist() == [[127, 255], [51, 0]]
    assert B.threshold_levels(255, np.array([0.5])).tolist() == [127]
    # foreground is img > 127, so only the 255 pixel at (row 0, col 1)
    assert B.boxes_at_threshold(img, 127, True).tolist() == [[1, 0, 1, 1]]


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_equals_reference(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    thresholds = np.arange(0, 1, 0.01)
    for _ in range(12):
        height, width = int(rng.integers(3, 60)), int(rng.integers(3, 60))
        scoremap = make_map(kind, height, width, rng)
        gt = random_gt_boxes(height, width, rng, many=True)
        img = B.quantize(scoremap)
        fast_all, fast_largest = S.threshold_ious(img, thresholds, gt)
        for k, tau in enumerate(thresholds):
            for fast, all_contours in ((fast_all, True), (fast_largest, False)):
                ref = max(reference_iou(b, g) for b in reference_boxes(scoremap, float(tau), all_contours)
                          for g in gt.tolist())
                assert fast[k] == ref, (kind, height, width, tau, all_contours)


def test_largest_contour_box_matches_reference():
    rng = np.random.default_rng(7)
    for kind in KINDS:
        scoremap = make_map(kind, 40, 50, rng)
        img = B.quantize(scoremap)
        for tau in (0.0, 0.2, 0.5, 0.9):
            level = int(tau * int(img.max()))
            assert B.boxes_at_threshold(img, level, False).tolist() == reference_boxes(scoremap, tau, False)
            assert sorted(B.boxes_at_threshold(img, level, True).tolist()) == \
                sorted(reference_boxes(scoremap, tau, True))


def test_thresholds_outside_range_rejected():
    with pytest.raises(ValueError):
        S.threshold_ious(np.zeros((4, 4), np.uint8), np.array([1.0]), np.array([[0, 0, 1, 1]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_quantize_checked_equals_numpy(dtype):
    rng = np.random.default_rng(3)
    # values at and next to every k/255, where float32 and float64 products round differently
    edges = np.arange(256) / 255.0
    m = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, 1), rng.random(2000)])
    m = np.clip(m, 0, 1).astype(dtype)[: 48 * 48].reshape(48, 48)
    img, has_nan, lo, hi = S.quantize_checked(m)
    assert np.array_equal(img, (m * 255).astype(np.uint8))
    assert (has_nan, lo, hi) == (False, float(m.min()), float(m.max()))
    m[3, 4] = np.nan
    assert S.quantize_checked(m)[1]
