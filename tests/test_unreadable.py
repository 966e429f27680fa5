"""Real folders survive: a JPEG with bytes after its end-of-image marker is valid, a truncated
one is refused even when an EXIF thumbnail inside it ends with a marker of its own, and an
unreadable image in `eval` is skipped, reported and scored as a miss (the same numbers as its
map missing under `--allow-missing`); `--max-bad-images` stops a run past the limit."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from cream_rt.errors import ImageReadError
from cream_rt.preprocess import decode_image_bytes


def _jpeg(seed: int = 0, size: int = 48) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_bytes_after_the_end_of_image_marker_are_allowed():
    data = _jpeg()
    want = decode_image_bytes(data, "a.jpg")
    for trailer in (b"\0" * 1188, b"\0" * 5000 + b"camera trailer"):
        np.testing.assert_array_equal(decode_image_bytes(data + trailer, "padded.jpg"), want)


def test_a_truncated_jpeg_is_refused_even_with_a_complete_thumbnail():
    """An APP1 segment holding a whole JPEG (as an EXIF thumbnail does) puts an end-of-image
    marker early in the file; the main image cut short is still truncated."""
    data = _jpeg(1, 96)
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        decode_image_bytes(data[:-300], "cut.jpg")
    thumbnail = _jpeg(2, 16)
    app1 = b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumbnail
    with_thumbnail = data[:2] + app1 + data[2:]
    assert decode_image_bytes(with_thumbnail, "thumb.jpg").shape == (96, 96, 3)
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        decode_image_bytes(with_thumbnail[:-300], "thumb-cut.jpg")


def test_eval_scores_an_unreadable_image_as_a_miss(tiny, tmp_path):
    pytest.importorskip("torch")
    from cli_helpers import assert_one_error, run

    maps = tmp_path / "maps"
    run("eval", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--save-maps", maps, expect=0)
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    bad = (data / "metadata" / "test" / "image_ids.txt").read_text().split()[3]
    (data / "images" / bad).write_bytes(b"not an image")
    result = run("eval", "--checkpoint", tiny["ckpt"], "--data", data, "--json", expect=0)
    out = json.loads(result.stdout)
    assert out["unreadable_images"]["count"] == 1 and bad in out["unreadable_images"]["images"]
    assert out["num_missing"] == 1 and out["num_images"] == 12
    assert sum(line.startswith("cream: warning:") for line in result.stderr.splitlines()) == 1
    (maps / f"{bad}.npy").unlink()
    reference = json.loads(run("eval", "--maps", maps, "--metadata", data / "metadata" / "test", "--allow-missing",
                               "--map-size", "64", "64",
                               "--json", expect=0).stdout)
    for key in ("MaxBoxAccV2", "MaxBoxAcc", "num_images", "num_missing"):
        assert out[key] == pytest.approx(reference[key]), key
    assert_one_error(run("eval", "--checkpoint", tiny["ckpt"], "--data", data, "--max-bad-images", "0"),
                     "--max-bad-images 0", "not a decodable image")


def test_int8_calibration_skips_an_unreadable_image(tiny, tmp_path):
    pytest.importorskip("onnx")
    from cli_helpers import run

    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    bad = (data / "metadata" / "train" / "image_ids.txt").read_text().split()[0]
    (data / "images" / bad).write_bytes(b"\x89PNG\r\n\x1a\n")
    out = json.loads(run("export", "--checkpoint", tiny["ckpt"], "--out", tmp_path / "q.onnx", "--int8",
                         "--calibration-data", data, "--json", expect=0).stdout)
    assert out["quantization"]["unreadable_images"]["count"] == 1
    assert out["quantization"]["calibration_images"] == 23  # 24 train images, one unreadable
