"""The evaluator and `cream eval --maps` against the plain reference on real CUB boxes,
PxAP against a plain per-threshold count on the real OpenImages masks, and bad maps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from adversarial_maps import KINDS, make_map, random_gt_boxes

from bench.reference_protocol import cam_like_map, reference_max_box_acc
from cream_rt.cli import main
from cream_rt.evaluate import gt_boxes_at
from cream_rt.metadata import read_split
from cream_rt.metrics import BoxEvaluator, PxAPEvaluator, load_gt_mask


def _cub_maps(shared_meta, count=50, seed=0):
    meta = read_split(shared_meta / "CUB" / "test")
    rng = np.random.default_rng(seed)
    ids = list(rng.choice(meta.image_ids, count, replace=False))
    gts = [gt_boxes_at(meta, i, (224, 224)) for i in ids]
    return meta, ids, gts, [cam_like_map(g, (224, 224), rng) for g in gts]


@pytest.mark.parametrize("interval", [0.01, 0.05])
def test_box_evaluator_equals_reference_on_cub(shared_meta, interval):
    _, _, gts, maps = _cub_maps(shared_meta)
    evaluator = BoxEvaluator(interval)
    top1 = [i % 3 != 0 for i in range(len(maps))]
    for m, g, c in zip(maps, gts, top1):
        evaluator.add(m, g, top1_correct=c, top5_correct=True)
    out = evaluator.result()
    ref_v2 = reference_max_box_acc(maps, [g.tolist() for g in gts], interval, all_contours=True)
    ref_v1 = reference_max_box_acc(maps, [g.tolist() for g in gts], interval, all_contours=False)
    ref_top1 = reference_max_box_acc(maps, [g.tolist() for g in gts], interval, False, (50,), top1)
    assert out["MaxBoxAccV2"] == ref_v2["mean"]
    assert out["MaxBoxAccV2_per_iou"] == {str(k): v for k, v in ref_v2["per_iou"].items()}
    assert out["MaxBoxAccV2_thresholds"] == {str(k): v for k, v in ref_v2["thresholds"].items()}
    assert out["MaxBoxAcc"] == ref_v1["per_iou"][50] == out["GT_known_Loc"]
    assert out["Top1_Loc"] == ref_top1["per_iou"][50]
    assert out["Top5_Loc"] == out["GT_known_Loc"]


def test_box_evaluator_equals_reference_on_adversarial_maps():
    rng = np.random.default_rng(3)
    maps, gts = [], []
    for k in range(90):
        kind = KINDS[k % len(KINDS)]
        maps.append(make_map(kind, 32, 40, rng))
        gts.append(random_gt_boxes(32, 40, rng, many=True))
    evaluator = BoxEvaluator(0.01, (32, 40))
    for m, g in zip(maps, gts):
        evaluator.add(m, g)
    out = evaluator.result()
    ref_v2 = reference_max_box_acc(maps, [g.tolist() for g in gts], 0.01, all_contours=True)
    ref_v1 = reference_max_box_acc(maps, [g.tolist() for g in gts], 0.01, all_contours=False)
    assert out["MaxBoxAccV2"] == ref_v2["mean"]
    assert out["MaxBoxAcc"] == ref_v1["per_iou"][50]


def _write_maps(folder: Path, ids, maps):
    for image_id, m in zip(ids, maps):
        path = folder / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, m)


def _subset_split(meta, ids, root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "image_ids.txt").write_text("\n".join(ids))
    (root / "class_labels.txt").write_text("".join(f"{i},{meta.class_labels[i]}\n" for i in ids))
    (root / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i in ids for w, h in [meta.image_sizes[i]]))
    (root / "localization.txt").write_text("".join(
        f"{i},{x0:g},{y0:g},{x1:g},{y1:g}\n" for i in ids for x0, y0, x1, y1 in meta.boxes[i]))
    return root


def test_cli_eval_maps_json_equals_reference(shared_meta, tmp_path, capsys):
    meta, ids, gts, maps = _cub_maps(shared_meta, count=40, seed=1)
    _write_maps(tmp_path / "maps", ids, maps)
    split = _subset_split(meta, ids, tmp_path / "split")
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--metadata", str(split), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = reference_max_box_acc(maps, [g.tolist() for g in gts], 0.01, all_contours=True)
    ref_v1 = reference_max_box_acc(maps, [g.tolist() for g in gts], 0.01, all_contours=False)
    assert out["MaxBoxAccV2"] == ref["mean"]
    assert out["MaxBoxAccV2_per_iou"] == {str(k): v for k, v in ref["per_iou"].items()}
    assert out["MaxBoxAcc"] == ref_v1["per_iou"][50]
    assert out["num_images"] == 40


def test_cli_eval_bad_and_missing_maps(shared_meta, tmp_path, capsys):
    meta, ids, gts, maps = _cub_maps(shared_meta, count=6, seed=2)
    split = _subset_split(meta, ids, tmp_path / "split")
    folder = tmp_path / "maps"
    _write_maps(folder, ids[1:], maps[1:])
    args = ["eval", "--maps", str(folder), "--metadata", str(split), "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "score map missing for image id" in err and ids[0] in err and err.count("\n") == 1
    assert main(args + ["--allow-missing"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_missing"] == 1 and out["missing"] == [ids[0]] and out["num_images"] == 6
    (folder / f"{ids[0]}.npy").parent.mkdir(parents=True, exist_ok=True)
    for bad, message in [(np.full((224, 224), np.nan, np.float32), "contains NaN"),
                         (np.full((224, 224), 1.5, np.float32), "must lie in [0, 1]"),
                         (np.zeros((100, 224), np.float32), "must have shape (224, 224)")]:
        np.save(folder / f"{ids[0]}.npy", bad)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and ids[0] in err
    (folder / f"{ids[0]}.npy").write_bytes(b"not an npy file")
    assert main(args) == 2
    assert "not a readable .npy score map" in capsys.readouterr().err


def _plain_pxap(maps, masks, thresholds):
    """PxAP by direct counting at each threshold (float64), from the spec's definition."""
    fg = np.concatenate([m[k == 1] for m, k in zip(maps, masks)]).astype(np.float64)
    bg = np.concatenate([m[k == 0] for m, k in zip(maps, masks)]).astype(np.float64)
    precision, recall = [], []
    for t in sorted(thresholds, reverse=True):
        tp, fp = (fg >= t).sum(), (bg >= t).sum()
        if tp + fp == 0:
            precision.append(np.nan)
        else:
            precision.append(tp / (tp + fp))
        recall.append(tp / len(fg))
    precision, recall = np.array(precision), np.array(recall)
    area = precision[1:] * np.diff(recall)
    return 100 * area[~np.isnan(area)].sum()


def test_pxap_on_real_openimages_masks(shared_meta, tmp_path):
    mask_root = shared_meta / "OpenImages_test_masks" / "test_masks"
    images = sorted({p.name.split("_")[0] + "|" + p.parent.name for p in mask_root.rglob("*_ignore.png")})
    assert len(images) == 5
    rng = np.random.default_rng(0)
    maps, masks = [], []
    lines = []
    for entry in images:
        stem, cls = entry.split("|")
        instance = sorted((mask_root / "val" / cls).glob(f"{stem}_m*.png"))
        gt = load_gt_mask(str(mask_root), [f"val/{cls}/{p.name}" for p in instance],
                          f"val/{cls}/{stem}_ignore.png", (224, 224))
        assert set(np.unique(gt).tolist()) <= {0, 1, 255}
        blurred = cv2.GaussianBlur((gt == 1).astype(np.float32), (0, 0), 12) + 0.3 * rng.random((224, 224))
        maps.append(((blurred - blurred.min()) / (blurred.max() - blurred.min())).astype(np.float32))
        masks.append(gt)
        lines += [f"val/{cls}/{stem}.jpg,val/{cls}/{p.name},{f'val/{cls}/{stem}_ignore.png' if k == 0 else ''}"
                  for k, p in enumerate(instance)]
    assert any((k == 1).any() for k in masks) and any((k == 255).any() for k in masks)
    evaluator = PxAPEvaluator(0.01)
    for m, k in zip(maps, masks):
        evaluator.add(m, k)
    thresholds = list(np.arange(0, 1, 0.01)) + [1.0, 2.0, 3.0]
    assert evaluator.result()["PxAP"] == pytest.approx(_plain_pxap(maps, masks, thresholds), abs=1e-9)
    # the same through the CLI with an OpenImages-style split
    split = tmp_path / "split"
    split.mkdir()
    ids = [f"val/{e.split('|')[1]}/{e.split('|')[0]}.jpg" for e in images]
    (split / "image_ids.txt").write_text("\n".join(ids))
    (split / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (split / "localization.txt").write_text("\n".join(lines))
    _write_maps(tmp_path / "maps", ids, maps)
    out = subprocess.run([sys.executable, "-m", "cream_rt.cli", "eval", "--maps", str(tmp_path / "maps"),
                          "--metadata", str(split), "--mask-root", str(mask_root), "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["PxAP"] == pytest.approx(_plain_pxap(maps, masks, thresholds), abs=1e-9)


def test_cli_eval_maps_with_pas_equals_reference(shared_meta, tmp_path, capsys):
    """`cream eval --maps --pas`: thresholds relative to each map's 90th percentile (RCAM)."""
    meta, ids, gts, maps = _cub_maps(shared_meta, count=30, seed=4)
    _write_maps(tmp_path / "maps", ids, maps)
    split = _subset_split(meta, ids, tmp_path / "split")
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--metadata", str(split), "--pas", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = reference_max_box_acc(maps, [g.tolist() for g in gts], 0.01, all_contours=True, pas=True)
    assert out["MaxBoxAccV2"] == ref["mean"] and out["threshold_reference"] == "percentile90"


def test_first_compilation_is_announced_then_cached(tmp_path):
    """A fresh install (empty numba cache) compiles the evaluator's kernels once, saying so on
    stderr; the next process loads them from the cache, silently and faster."""
    from cream_rt.box_sweep import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("numba (the [fast] extra) is not installed")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    code = "from cream_rt.box_sweep import compile_kernels; print(compile_kernels())"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    (first, cold), (second, warm) = [(r.stderr, float(r.stdout.split()[-1])) for r in runs]
    assert "compiling the evaluator's numba kernels" in first and cold > 1.0
    assert "compiling" not in second and warm < cold / 2
    assert any(tmp_path.rglob("*.nbi"))  # numba's cache index
