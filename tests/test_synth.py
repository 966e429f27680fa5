"""`cream synth` presets: each knob changes what it says and nothing else (object mask, sizes,
metadata), and the CLI refuses unknown presets with one line."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cream_rt.cli import main
from cream_rt.metadata import read_split
from cream_rt.synth import PRESETS, SynthConfig, body_colors, make_example, preset


def test_presets_build_and_unknown_is_refused():
    for name in PRESETS:
        assert isinstance(preset(name, train=1), SynthConfig)
    assert preset("default") == SynthConfig() and SynthConfig().decoys == 2
    assert preset("small", seed=3).scale == (0.12, 0.2) and preset("small", seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown synth preset 'huge'"):
        preset("huge")


def test_small_objects_are_smaller():
    areas = {}
    for name in ("default", "small"):
        cfg = preset(name, decoys=0)
        rng = np.random.default_rng(0)
        areas[name] = np.mean([make_example(i % 6, rng, cfg)[1].sum() for i in range(30)])
    assert areas["small"] < 0.5 * areas["default"]


def test_body_patches_lie_off_the_object_and_carry_the_body_texture():
    base = SynthConfig(decoys=0)
    plain, mask = make_example(1, np.random.default_rng([4, 0]), base)
    patched, mask2 = make_example(1, np.random.default_rng([4, 0]), SynthConfig(decoys=0, body_patches=3))
    assert np.array_equal(mask, mask2)
    changed = (plain != patched).any(axis=2)
    assert changed.sum() > 20 and not (changed & (mask > 0)).any()
    # the new pixels are (blurred) body stripes: many within 15 of a body colour (stripe edges are
    # blurred), where under 1% of the plain background is
    dark, light = (c.astype(float) for c in body_colors(1, 0.0))

    def near_body(pixels):
        pixels = pixels.astype(float)
        return np.minimum(np.abs(pixels - dark).sum(1), np.abs(pixels - light).sum(1)) < 15

    assert near_body(patched[changed]).mean() > 0.3 and near_body(plain[mask == 0]).mean() < 0.01


def test_size_range_gives_varied_sizes_and_consistent_metadata(tmp_path):
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--preset", "default", "--train", "4", "--val", "2", "--test", "6"]) == 0
    cfg = SynthConfig(train=2, val=2, test=8, size_range=(64, 120), decoys=0)
    from cream_rt.synth import generate

    generate(tmp_path / "v", cfg, show_progress=False)
    meta = read_split(tmp_path / "v" / "metadata" / "test")
    sizes = {meta.image_sizes[i] for i in meta.image_ids}
    assert len(sizes) > 3 and all(64 <= w <= 120 and 64 <= h <= 120 for w, h in sizes)
    import cv2

    for image_id in meta.image_ids:
        w, h = meta.image_sizes[image_id]
        image = cv2.imread(str(tmp_path / "v" / "images" / image_id))
        mask = cv2.imread(str(tmp_path / "v" / "masks" / image_id), cv2.IMREAD_GRAYSCALE)
        assert image.shape[:2] == (h, w) == mask.shape
        ys, xs = np.nonzero(mask)
        assert list(meta.boxes[image_id][0]) == [xs.min(), ys.min(), xs.max(), ys.max()]


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image not installed (photo preset)")
def test_photo_backgrounds_come_from_the_bundled_photographs():
    from cream_rt.synth import _photos, photo_crop

    photos = _photos()
    assert len(photos) == 7 and all(p.ndim == 3 and p.shape[2] == 3 for p in photos)
    crop = photo_crop(96, np.random.default_rng(0))
    assert crop.shape == (96, 96, 3) and crop.std() > 5  # a real picture, not a flat fill
    image, mask = make_example(0, np.random.default_rng(1), preset("photo"))
    assert image.shape[:2] == mask.shape and 80 <= image.shape[0] <= 160


def test_cli_rejects_an_unknown_preset(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "x"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown synth preset 'nope'" in err[0]
