"""`cream report` (issue 42): the page's numbers are `cream eval`'s for each mode; every section is
there, every picture is an inline PNG that decodes; the page renders in headless Chromium as a
person sees it (skipped with the reason where Chromium is absent); bad input gives one error
line and no page."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
from cli_helpers import assert_one_error, run  # noqa: E402

from cream_rt.report import SECTIONS  # noqa: E402

MAX_BYTES = 10_000_000


class _Page(HTMLParser):
    """The section ids, the images' sources and the gallery's figures of a page."""

    def __init__(self):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.figures = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "figure":
            self.figures += 1


@pytest.fixture(scope="module")
def page(tiny, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = run("report", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out, "--json", expect=0)
    return {"path": out, "record": json.loads(result.stdout)}


def test_the_page_holds_eval_s_numbers_every_section_and_decodable_pictures(tiny, page):
    import cv2

    for mode in ("cam", "cream"):
        want = json.loads(run("eval", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--split", "test",
                              "--mode", mode, "--json", expect=0).stdout)
        got = page["record"][mode]
        for key in ("MaxBoxAccV2", "MaxBoxAccV2_per_iou", "GT_known_Loc", "Top1_Loc", "Top5_Loc",
                    "classification_top1"):
            assert got[key] == pytest.approx(want[key]), (mode, key)
    text = page["path"].read_text(encoding="utf-8")
    assert page["record"]["bytes"] == page["path"].stat().st_size < MAX_BYTES
    parsed = _Page()
    parsed.feed(text)
    assert parsed.sections == list(SECTIONS)
    assert parsed.figures >= 6  # best, median, worst: two each
    assert len(parsed.images) == parsed.figures + 1  # the gallery and the threshold chart
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")  # inline: nothing to fetch
        png = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
        picture = cv2.imdecode(png, cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape[0] > 100 and picture.std() > 5
    for name in ("MaxBoxAccV2", "GT-known Loc", "Top-1 Loc", "shipped threshold", "CREAM loses most to CAM"):
        assert name in text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not found (Debian: apt-get install chromium)")


def test_the_page_renders_in_headless_chromium(page, tmp_path):
    """Chromium loads the page from disk with no network: the rendered DOM has every section and
    every picture, and the screenshot is not blank."""
    import cv2

    browser = _chromium()
    url = page["path"].resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    parsed = _Page()
    parsed.feed(dom)
    assert parsed.sections == list(SECTIONS) and parsed.figures >= 6
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1100,2200", url], capture_output=True,
                   timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None, "no screenshot"
    ink = (picture < 200).any(axis=2)
    assert ink.mean() > 0.05 and picture.std() > 20  # text, a chart and photos, not a blank page
    assert ink[1200:].mean() > 0.02  # the gallery's photos below the chart


def test_bad_input_is_one_line_and_no_page(tiny, tmp_path):
    out = tmp_path / "r.html"
    assert_one_error(run("report", "--checkpoint", tmp_path / "missing.pt", "--data", tiny["data"], "--out", out),
                     "missing.pt")
    meta = tmp_path / "meta" / "test"
    meta.mkdir(parents=True)
    source = tiny["data"] / "metadata" / "test"
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt"):
        (meta / name).write_text((source / name).read_text())
    assert_one_error(run("report", "--checkpoint", tiny["ckpt"], "--metadata", meta, "--images",
                         tiny["data"] / "images", "--out", out), "localization")
    assert_one_error(run("report", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out",
                         tmp_path / "no" / "such" / "r.html"), "--out")
    assert not out.exists() and not list(tmp_path.glob("*.html*"))


def _iou(a, b) -> float:
    """Plain IoU of two inclusive pixel boxes (wsolevaluation's +1 convention)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_localize_on_a_split_with_boxes_draws_them_and_records_iou_with_cam_beside_cream(tiny, tmp_path):
    """`cream localize SPLIT --overlays --overlays-compare CAM.onnx`: each record has its ground
    truth and the best IoU of its boxes (= a plain IoU, int pixels); each overlay is CAM | CREAM
    side by side at twice the image's width plus the gap."""
    import cv2

    cam = tmp_path / "cam.onnx"
    run("export", "--checkpoint", tiny["ckpt"], "--out", cam, "--mode", "cam", expect=0)
    split, out, overlays = tiny["data"] / "metadata" / "test", tmp_path / "r.jsonl", tmp_path / "ov"
    run("localize", split, "--images", tiny["data"] / "images", "--model", tiny["model"], "--out", out, "--overlays",
        overlays, "--overlays-compare", cam, expect=0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all("gt_boxes" in r for r in records)
    for r in records:
        want = max([_iou([int(v) for v in p], [int(v) for v in g]) for p in r["boxes"] for g in r["gt_boxes"]],
                   default=0.0)
        assert r["iou"] == pytest.approx(want, abs=1e-4)
    pictures = sorted(overlays.rglob("*.png"))
    assert len(pictures) == 12
    first = cv2.imread(str(pictures[0]))
    width, height = records[0]["image_size"]
    assert first.shape[:2] == (height, 2 * width + 8)
    assert_one_error(run("localize", split, "--images", tiny["data"] / "images", "--model", tiny["model"], "--out",
                         tmp_path / "x.jsonl", "--overlays-compare", cam), "--overlays-compare goes with --overlays")
    assert_one_error(run("localize", split, "--images", tiny["data"] / "images", "--model", tiny["model"], "--out",
                         tmp_path / "x", "--ray", "--overlays-compare", cam), "--overlays-compare is not available")


def test_overlay_text_and_lines_scale_with_the_photo():
    from cream_rt.overlay import draw_overlay

    def band(side: int) -> int:
        image = np.full((side, side, 3), 128, np.uint8)
        out = draw_overlay(image, np.zeros((8, 8), np.float32), [], "label 0.99")
        dark = (out[:, side // 2] < 10).all(axis=1)  # the caption's black band, down the middle column
        return int(np.argmin(dark)) if not dark.all() else side

    assert band(4000) >= 6 * band(200) > 0


BENCH = {"backbone": "small-cnn", "input_size": 64, "ratios": ["onnxruntime vs eager, cream, batch 1: speed-up 3x"],
         "rows": [{"engine": e, "mode": m, "batch": b, "p50_ms_per_image": ms, "third_party": e == "torchcam"}
                  for e, m, b, ms in (("eager", "cream", 1, 6.0), ("onnxruntime", "cream", 1, 2.0),
                                      ("eager", "cam", 1, 5.5), ("onnxruntime", "cam", 1, 1.9),
                                      ("torchcam", "cam", 1, 9.0))]}


def test_tune_parity_and_bench_sections(tiny, tmp_path):
    """A tuned checkpoint gets the tune chart (its record's settings); `--models` a parity section
    whose max difference is `cream parity`'s; `--bench` the latency chart; bad ones are one line."""
    tuned, bench, out = tmp_path / "tuned.pt", tmp_path / "bench.json", tmp_path / "full.html"
    run("tune", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", tuned, "--iterations", "1,2",
        "--layers", "cam", expect=0)
    run("export", "--checkpoint", tuned, "--out", tmp_path / "tuned.onnx", expect=0)
    bench.write_text(json.dumps(BENCH))
    record = json.loads(run("report", "--checkpoint", tuned, "--data", tiny["data"], "--models",
                            tmp_path / "tuned.onnx", "--bench", bench, "--out", out, "--json", expect=0).stdout)
    parsed = _Page()
    text = out.read_text(encoding="utf-8")
    parsed.feed(text)
    assert parsed.sections == [*SECTIONS, "tune", "parity", "bench"] and record["bytes"] < MAX_BYTES
    parity = json.loads(run("parity", "--checkpoint", tuned, "--model", tmp_path / "tuned.onnx", "--data",
                            tiny["data"], "--split", "test", "--json", expect=0).stdout)
    shown = float(text.split("<td>cream fp32</td>")[1].split("</td>")[2].removeprefix("<td>"))
    assert shown == pytest.approx(parity["maps_max_abs_diff"], abs=2e-6)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"engine": "x"}]}))
    assert_one_error(run("report", "--checkpoint", tuned, "--data", tiny["data"], "--bench", bad, "--out",
                         tmp_path / "b.html"), "not a `cream bench --json-out` result")
    assert not (tmp_path / "b.html").exists()
