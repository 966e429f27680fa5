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
