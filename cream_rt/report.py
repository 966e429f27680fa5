"""The report page (`cream report`): one self-contained HTML file (charts and pictures inline as
PNG, no network) that a person reads at a glance: CAM beside CREAM in the wsolevaluation
metrics, MaxBoxAcc against the box threshold with the chosen and the shipped threshold marked,
and a gallery of photos (CAM map | CREAM map | boxes with the ground truth and IoU) for the
best, the median and the worst images and those where CREAM loses most to CAM. Charts by
matplotlib (the `report` extra); no torch."""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .boxes import map_boxes, scale_boxes
from .errors import CreamError
from .metadata import SplitMetadata
from .metrics import BoxEvaluator

__all__ = ["MODES", "SECTIONS", "OPTIONAL_SECTIONS", "ExportParity", "ModeScores", "ReportData", "GalleryPick",
           "gallery_picks", "require_matplotlib", "render_report", "write_report", "write_pictures"]

MODES = ("cam", "cream")
SECTIONS = ("metrics", "threshold", "gallery")  # the page's section ids, in order
OPTIONAL_SECTIONS = ("tune", "parity", "bench")  # after them, where the run has them
GALLERY_EACH = 2  # images per gallery group
DISPLAY_SIDE = 280  # pixels of the longer side of a gallery photo
COLORS = {"gt": "#e41a1c", "cam": "#377eb8", "cream": "#4daf4a"}


@dataclass
class ModeScores:
    """One mode's maps over the split: the protocol's evaluator (the metrics `cream eval` gives)
    and, per image, its best IoU at every threshold (largest contour) and its map (uint8)."""

    evaluator: BoxEvaluator
    iou_largest: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, image_id: str, scoremap: np.ndarray, gt_boxes: np.ndarray, top1: bool, top5: bool) -> None:
        """Score one map (as `cream eval` does) and keep what the gallery needs."""
        result = self.evaluator.compute(scoremap, gt_boxes, image_id)
        self.evaluator.accumulate(result, top1, top5, image_id)
        self.iou_largest[image_id] = result.iou_largest
        self.maps[image_id] = (np.clip(scoremap, 0, 1) * 255).round().astype(np.uint8)

    def curve(self) -> np.ndarray:
        """MaxBoxAcc (IoU 0.5, largest contour: GT-known Loc) in percent at every threshold."""
        return self.evaluator.correct_largest[50] * 100.0 / max(1, self.evaluator.count)


@dataclass
class ExportParity:
    """One export's maps against the eager model's of the same mode over the split: its scores,
    per image the largest absolute map difference, and the class agreement."""

    path: str
    mode: str
    precision: str
    scores: ModeScores
    eager: ModeScores
    max_diff: dict[str, float] = field(default_factory=dict)
    p99_diff: list[float] = field(default_factory=list)
    agree: int = 0

    def add(self, image_id: str, eager_map: np.ndarray, export_map: np.ndarray, same_class: bool) -> None:
        """One image's difference (the export's map is scored by `scores.add` separately)."""
        diff = np.abs(export_map.astype(np.float64) - eager_map.astype(np.float64))
        self.max_diff[image_id] = float(diff.max())
        self.p99_diff.append(float(np.percentile(diff, 99)))
        self.agree += bool(same_class)


@dataclass
class ReportData:
    """What the page shows: the split, the scores of each mode, classification, and where the
    numbers came from."""

    meta: SplitMetadata
    image_root: Path
    map_size: int
    scores: dict[str, ModeScores]
    top1: float
    title: str
    facts: dict[str, str]
    shipped_threshold: float | None = None
    unreadable: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    tune: dict | None = None  # the checkpoint's `cream tune` record (its "rows": each setting's val score)
    parity: list[ExportParity] = field(default_factory=list)
    bench: dict | None = None  # a `cream bench --json-out` result

    def class_name(self, image_id: str) -> str:
        """The image's label with its class name where the model has names."""
        label = self.meta.class_labels[image_id]
        return f"{label} {self.class_names[label]}" if label < len(self.class_names) else str(label)

    def result(self, mode: str) -> dict:
        """The mode's wsolevaluation metrics (as `cream eval --json` gives them) and top-1."""
        return {**self.scores[mode].evaluator.result(), "classification_top1": self.top1}


@dataclass(frozen=True)
class GalleryPick:
    """One gallery image: which group it is shown in, its id and each mode's IoU."""

    group: str
    image_id: str
    iou: dict[str, float]


def chosen_index(scores: ModeScores) -> int:
    """The threshold index with the best MaxBoxAcc (the threshold `cream tune` ships)."""
    return int(np.argmax(scores.curve()))


def gallery_picks(data: ReportData, each: int = GALLERY_EACH) -> list[GalleryPick]:
    """The best, the median and the worst images by CREAM's IoU at its chosen threshold, and the
    images where CREAM's IoU falls most below CAM's (each at its own chosen threshold)."""
    k = {mode: chosen_index(data.scores[mode]) for mode in MODES}
    ids = [i for i in data.meta.image_ids if i in data.scores["cream"].iou_largest]
    if not ids:
        raise CreamError(f"{data.meta.root}: no readable image to show")
    iou = {i: {mode: float(data.scores[mode].iou_largest[i][k[mode]]) for mode in MODES} for i in ids}
    order = sorted(ids, key=lambda i: (-iou[i]["cream"], i))
    middle = max(0, len(order) // 2 - each // 2)
    groups = [("best", order[:each]), ("median", order[middle:middle + each]), ("worst", order[::-1][:each])]
    losses = sorted((i for i in ids if iou[i]["cam"] - iou[i]["cream"] > 0),
                    key=lambda i: iou[i]["cream"] - iou[i]["cam"])
    groups.append(("CREAM loses most to CAM", losses[:each]))
    return [GalleryPick(group, i, iou[i]) for group, chosen in groups for i in chosen]


def _png(figure) -> str:
    """A matplotlib figure as an inline PNG data URI; the figure is closed."""
    return "data:image/png;base64," + base64.b64encode(_encoded(figure, "png")).decode("ascii")


def _encoded(figure, kind: str) -> bytes:
    """A matplotlib figure as PNG or JPEG bytes (90 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    options = {"pil_kwargs": {"quality": 82}} if kind == "jpg" else {}
    figure.savefig(buffer, format=kind, dpi=90, bbox_inches="tight", **options)
    plt.close(figure)
    return buffer.getvalue()


def require_matplotlib():  # noqa: ANN201 (matplotlib.pyplot)
    """matplotlib's pyplot on the Agg backend; CreamError naming the extra where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise CreamError("the report needs matplotlib: pip install 'cream-rt[report]'") from None
    return plt


def threshold_chart(data: ReportData):  # noqa: ANN201 (a matplotlib Figure)
    """MaxBoxAcc against the box threshold for CAM and CREAM, the chosen (best) threshold of each
    and the shipped one marked."""
    plt = require_matplotlib()
    thresholds = data.scores["cream"].evaluator.thresholds
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for mode in MODES:
        curve = data.scores[mode].curve()
        k = chosen_index(data.scores[mode])
        axis.plot(thresholds, curve, color=COLORS[mode],
                  label=f"{mode.upper()} (best {curve[k]:.1f} at {thresholds[k]:.2f})")
        axis.axvline(thresholds[k], color=COLORS[mode], linestyle=":", linewidth=1)
    if data.shipped_threshold is not None:
        axis.axvline(data.shipped_threshold, color="black", linestyle="--", linewidth=1,
                     label=f"shipped threshold {data.shipped_threshold:.2f}")
    axis.set_xlabel("box threshold (fraction of the map's max)")
    axis.set_ylabel("MaxBoxAcc at IoU 0.5 (%)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    return figure


def _display(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo shrunk to DISPLAY_SIDE on its longer side, and the scale applied."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image, scale


def gallery_figure(data: ReportData, pick: GalleryPick):  # noqa: ANN201 (a matplotlib Figure)
    """CAM map | CREAM map (over the photo, each with its box) | the photo with the ground truth
    (red), CAM's box (blue) and CREAM's (green), IoUs in the titles."""
    import cv2

    from .preprocess import read_image

    plt = require_matplotlib()
    from matplotlib.patches import Rectangle

    photo = read_image(data.image_root / pick.image_id)
    h, w = photo.shape[:2]
    shown, scale = _display(photo)
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    boxes = {}
    for axis, mode in zip(axes[:2], MODES):
        scores = data.scores[mode]
        level = float(scores.evaluator.thresholds[chosen_index(scores)])
        scoremap = scores.maps[pick.image_id].astype(np.float32) / 255
        boxes[mode] = scale_boxes(map_boxes(scoremap, level, False), data.map_size, w, h)
        heat = cv2.resize(scoremap, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_CUBIC)
        axis.imshow(shown)
        axis.imshow(np.clip(heat, 0, 1), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axis.set_title(f"{mode.upper()} map, IoU {pick.iou[mode]:.2f}", fontsize=9)
    axes[2].imshow(shown)
    axes[2].set_title("boxes: ground truth, CAM, CREAM", fontsize=9)
    drawn = ((COLORS["gt"], data.meta.boxes[pick.image_id], (0, 1, 2)), (COLORS["cam"], boxes["cam"], (0, 2)),
             (COLORS["cream"], boxes["cream"], (1, 2)))
    for color, shown_boxes, panels in drawn:
        for x0, y0, x1, y1 in shown_boxes:
            for p in panels:
                axes[p].add_patch(Rectangle((x0 * scale, y0 * scale), (x1 - x0) * scale, (y1 - y0) * scale, fill=False,
                                            edgecolor=color, linewidth=1.6))
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(f"{pick.image_id} (class {data.class_name(pick.image_id)})", fontsize=9)
    return figure


def _metrics_table(data: ReportData) -> str:
    ious = sorted(data.result("cream")["MaxBoxAccV2_per_iou"])
    rows: list[tuple[str, tuple[str, ...]]] = [("MaxBoxAccV2", ("MaxBoxAccV2",))]
    rows += [(f"MaxBoxAccV2 at IoU 0.{d[0]}", ("MaxBoxAccV2_per_iou", d)) for d in ious]
    rows += [("GT-known Loc (MaxBoxAcc, IoU 0.5)", ("GT_known_Loc",)), ("its best threshold", ("MaxBoxAcc_threshold",)),
             ("Top-1 Loc", ("Top1_Loc",)), ("Top-5 Loc", ("Top5_Loc",)),
             ("top-1 classification", ("classification_top1",))]

    def get(result: dict, path: tuple[str, ...]) -> float | None:
        for key in path:
            result = result.get(key) if isinstance(result, dict) else None  # type: ignore[assignment]
        return result  # type: ignore[return-value]

    results = {mode: data.result(mode) for mode in MODES}
    body = []
    for name, path in rows:
        values = [get(results[mode], path) for mode in MODES]
        cells = "".join(f"<td>{v:.2f}</td>" if isinstance(v, (int, float)) else "<td>-</td>" for v in values)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    head = "".join(f"<th>{mode.upper()}</th>" for mode in MODES)
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def tune_chart(record: dict):  # noqa: ANN201 (a matplotlib Figure)
    """Each setting `cream tune` scored, by its val MaxBoxAccV2 (the best 25), the chosen one
    marked, CAM's and the checkpoint's own setting as lines."""
    plt = require_matplotlib()
    rows = sorted(record["rows"], key=lambda r: -r["MaxBoxAccV2"])[:25][::-1]
    chosen = record.get("name")
    figure, axis = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
    colors = [COLORS["cream"] if r["name"] == chosen else "#999999" for r in rows]
    axis.barh([r["name"] for r in rows], [r["MaxBoxAccV2"] for r in rows], color=colors)
    cam = record.get("val_cam", {}).get("MaxBoxAccV2")
    if cam is not None:
        axis.axvline(cam, color=COLORS["cam"], linestyle=":", label=f"CAM {cam:.1f}")
    default = record.get("val_default", {})
    if default.get("MaxBoxAccV2") is not None:
        axis.axvline(default["MaxBoxAccV2"], color="black", linestyle="--",
                     label=f"before tuning ({default.get('name')}) {default['MaxBoxAccV2']:.1f}")
    axis.set_xlabel("val MaxBoxAccV2 (%); green: chosen")
    axis.tick_params(axis="y", labelsize=7)
    axis.legend(loc="lower right", fontsize=8)
    return figure


def difference_figure(parity: ExportParity, image_id: str):  # noqa: ANN201 (a matplotlib Figure)
    """Eager map | the export's | their absolute difference, for one image."""
    plt = require_matplotlib()
    eager = parity.eager.maps[image_id].astype(np.float32) / 255
    export = parity.scores.maps[image_id].astype(np.float32) / 255
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.2))
    for axis, shown, title in ((axes[0], eager, "eager"), (axes[1], export, Path(parity.path).name)):
        axis.imshow(shown, cmap="jet", vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
    difference = axes[2].imshow(np.abs(export - eager), cmap="magma")
    axes[2].set_title(f"|difference|, max {parity.max_diff[image_id]:.2g}", fontsize=9)
    figure.colorbar(difference, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(image_id, fontsize=9)
    return figure


def bench_chart(result: dict):  # noqa: ANN201 (a matplotlib Figure)
    """Milliseconds per image of every engine (peers included) at each batch size, per mode."""
    plt = require_matplotlib()
    rows = [r for r in result.get("rows", []) if "p50_ms_per_image" in r]
    modes = sorted({r["mode"] for r in rows})
    figure, axes = plt.subplots(1, max(1, len(modes)), figsize=(5 * max(1, len(modes)), 3.6), squeeze=False)
    for axis, mode in zip(axes[0], modes):
        engines = list(dict.fromkeys(r["engine"] for r in rows if r["mode"] == mode))
        batches = sorted({r["batch"] for r in rows if r["mode"] == mode})
        width = 0.8 / max(1, len(batches))
        for j, batch in enumerate(batches):
            ms = [next((r["p50_ms_per_image"] for r in rows if (r["mode"], r["engine"], r["batch"]) ==
                        (mode, e, batch)), 0.0) for e in engines]
            axis.bar(np.arange(len(engines)) + j * width, ms, width, label=f"batch {batch}")
        axis.set_xticks(np.arange(len(engines)) + width * (len(batches) - 1) / 2, engines, rotation=30, ha="right",
                        fontsize=8)
        axis.set_ylabel("ms per image (median)")
        axis.set_title(mode.upper(), fontsize=10)
        axis.legend(fontsize=8)
    return figure


def _optional_sections(data: ReportData) -> str:
    parts = []
    if data.tune and data.tune.get("rows"):
        t = data.tune
        parts.append(f"""<section id="tune"><h2>cream tune: the val score of each setting</h2>
<p>Chosen: <b>{html.escape(str(t.get('name')))}</b>, val MaxBoxAccV2 {t.get('val', {}).get('MaxBoxAccV2', 0):.2f},
box threshold {t.get('box_threshold', 0):.2f}; {len(t['rows'])} settings scored on
{html.escape(str(t.get('val_split')))}.</p>
<img src="{_png(tune_chart(t))}" alt="val score of each setting"></section>""")
    if data.parity:
        rows, pictures = [], []
        for p in data.parity:
            eager, export = p.eager.evaluator.result()["MaxBoxAccV2"], p.scores.evaluator.result()["MaxBoxAccV2"]
            worst = max(p.max_diff, key=lambda i: p.max_diff[i])
            rows.append(f"<tr><th>{html.escape(p.path)}</th><td>{p.mode} {p.precision}</td><td>{eager:.2f}</td>"
                        f"<td>{export:.2f}</td><td>{max(p.max_diff.values()):.2g}</td>"
                        f"<td>{float(np.percentile(p.p99_diff, 50)):.2g}</td>"
                        f"<td>{p.agree * 100.0 / max(1, len(p.max_diff)):.1f}</td></tr>")
            pictures.append(f'<figure><img src="{_png(difference_figure(p, worst))}" alt="difference map">'
                            f"<figcaption>{html.escape(p.path)}: the image with the largest difference</figcaption>"
                            "</figure>")
        parts.append(f"""<section id="parity"><h2>Parity: eager against each export</h2>
<table><tr><th>export</th><th>mode</th><th>MaxBoxAccV2 eager</th><th>export</th><th>maps max |diff|</th>
<th>median p99 |diff|</th><th>same class (%)</th></tr>{''.join(rows)}</table>{''.join(pictures)}</section>""")
    if data.bench and data.bench.get("rows"):
        ratios = "".join(f"<li>{html.escape(str(r))}</li>" for r in data.bench.get("ratios", []))
        parts.append(f"""<section id="bench"><h2>Latency per engine and batch</h2>
<p>{html.escape(str(data.bench.get('backbone', '')))}, {data.bench.get('input_size', '')} px;
ratios from the same run:</p><ul>{ratios}</ul>
<img src="{_png(bench_chart(data.bench))}" alt="latency per engine"></section>""")
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child{text-align:left}figure{margin:1em 0}figcaption{font-size:90%;color:#555}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:90%}dt{color:#666}"""


def render_report(data: ReportData) -> str:
    """The page as one HTML string (every picture inline)."""
    picks = gallery_picks(data)
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in data.facts.items())
    unreadable = (f"<p>{len(data.unreadable)} unreadable image(s) scored as misses: "
                  f"{html.escape(', '.join(data.unreadable[:10]))}</p>") if data.unreadable else ""
    gallery, group = [], None
    for pick in picks:
        if pick.group != group:
            group = pick.group
            gallery.append(f"<h3>{html.escape(group)}</h3>")
        gallery.append(f'<figure><img src="{_png(gallery_figure(data, pick))}" alt="{html.escape(pick.image_id)}">'
                       f"<figcaption>{html.escape(pick.image_id)}: IoU CAM {pick.iou['cam']:.2f}, CREAM "
                       f"{pick.iou['cream']:.2f}</figcaption></figure>")
    if not any(p.group.startswith("CREAM loses") for p in picks):
        gallery.append("<h3>CREAM loses most to CAM</h3><p>no image: CREAM's IoU is never below CAM's</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title><style>{STYLE}</style></head>
<body><h1>{html.escape(data.title)}</h1><dl>{facts}</dl>{unreadable}
<section id="metrics"><h2>Metrics: CAM beside CREAM</h2>{_metrics_table(data)}</section>
<section id="threshold"><h2>MaxBoxAcc against the box threshold</h2>
<p>Dotted: each mode's best threshold (what <code>cream tune</code> ships); dashed: the model's shipped one.</p>
<img src="{_png(threshold_chart(data))}" alt="MaxBoxAcc against the threshold"></section>
<section id="gallery"><h2>Gallery</h2><p>Red: ground truth; blue: CAM's box; green: CREAM's box; each at its
mode's best threshold; IoU of the largest contour's box.</p>{''.join(gallery)}</section>
{_optional_sections(data)}
</body></html>
"""


def write_pictures(folder: str | os.PathLike, data: ReportData) -> list[Path]:
    """The pictures a README shows, as files in `folder` (made if its parent exists): the
    threshold chart (PNG) and the first gallery image of each group (JPEG), each written
    atomically. Returns their paths."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise CreamError(f"--pictures {folder}: its parent folder does not exist")
    folder.mkdir(exist_ok=True)
    files = {folder / "threshold_curve.png": _encoded(threshold_chart(data), "png")}
    seen: set[str] = set()
    for pick in gallery_picks(data):
        if pick.group not in seen:
            seen.add(pick.group)
            name = pick.group.split()[0].lower() if " " not in pick.group else "cream_loses"
            files[folder / f"gallery_{name}.jpg"] = _encoded(gallery_figure(data, pick), "jpg")
    for path, payload in files.items():
        with atomic_open(path, "wb", what="--pictures") as handle:
            handle.write(payload)
    return list(files)


def write_report(path: str | os.PathLike, data: ReportData) -> int:
    """Render and write the page atomically (no half-written page); returns its size in bytes."""
    page = render_report(data).encode("utf-8")
    with atomic_open(path, "wb", what="--out") as handle:
        handle.write(page)
    return len(page)

