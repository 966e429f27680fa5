"""The shipped defaults on real ILSVRC photos as a new user gets them, through the CLI and nothing
else: `cream import --from imagenet`, `cream fit-embeddings` on the train split (the scored
photos' labels), `cream eval` on test (metrics at their best thresholds), `cream export`, and
`cream localize` with no threshold given (the backbone's shipped one), whose boxes are scored
here with a plain IoU: Top-1 Loc and the class accuracy as `cream localize` delivers them.

    python -m bench.shipped --backbones efficientnet-lite0,efficientnet-lite1,efficientnet-lite2 \\
        --out bench/results/shipped.json"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import command_line, machine_info

from .accuracy import REAL_DATA, cli


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two inclusive pixel boxes `[x0, y0, x1, y1]` (wsolevaluation's +1 convention)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def read_split(root: Path, split: str) -> tuple[list[str], dict[str, int], dict[str, list[list[float]]]]:
    """(image ids, labels, GT boxes) of a wsolevaluation split, read with plain Python."""
    folder = root / "metadata" / split
    ids = (folder / "image_ids.txt").read_text().split()
    labels = {i: int(c) for i, c in (line.split(",") for line in (folder / "class_labels.txt").read_text().split())}
    boxes: dict[str, list[list[float]]] = {}
    for line in (folder / "localization.txt").read_text().split():
        image_id, *box = line.split(",")
        boxes.setdefault(image_id, []).append([float(v) for v in box])
    return ids, labels, boxes


def localize_scores(records: list[dict], ids: list[str], labels: dict, boxes: dict, root: Path) -> dict:
    """Top-1 Loc (class right and a box with IoU >= 0.5 to a GT box) and top-1 of the records."""
    by_image = {Path(r["image"]).relative_to(root / "images").as_posix(): r for r in records}
    top1 = loc = 0
    for image_id in ids:
        record = by_image[image_id]
        right = record["class_id"] == labels[image_id]
        hit = any(iou(p, g) >= 0.5 for p in record["boxes"][:1] for g in boxes[image_id])
        top1 += right
        loc += right and hit
    return {"Top1_Loc": 100.0 * loc / len(ids), "top1": 100.0 * top1 / len(ids), "images": len(ids)}


def measure(backbone: str, work: Path) -> dict:
    """One backbone's CAM and CREAM rows: eval at the best thresholds, localize at the shipped one."""
    root = REAL_DATA / "ilsvrc_dev"
    imported, fitted = work / f"{backbone}.pt", work / f"{backbone}-fit.pt"
    cli(["import", "--from", "imagenet", "--arch", backbone, "--out", str(imported)])
    cli(["fit-embeddings", "--checkpoint", str(imported), "--data", str(root), "--out", str(fitted)])
    ids, labels, boxes = read_split(root, "test")
    rows = {}
    for mode in ("cam", "cream"):
        evaluated = cli(["eval", "--checkpoint", str(fitted), "--data", str(root), "--split", "test", "--mode", mode])
        onnx_path, results = work / f"{backbone}-{mode}.onnx", work / f"{backbone}-{mode}.jsonl"
        cli(["export", "--checkpoint", str(fitted), "--out", str(onnx_path), "--mode", mode])
        from cream_rt.runtime import Localizer

        with Localizer.load(onnx_path) as loc:
            threshold, source = loc.threshold, loc.threshold_source
        cli(["localize", *(str(root / "images" / i) for i in ids), "--model", str(onnx_path), "--out", str(results)])
        records = [json.loads(line) for line in results.read_text().splitlines()]
        kept = ("MaxBoxAccV2", "GT_known_Loc", "Top1_Loc", "Top1_Loc_threshold", "MaxBoxAcc_threshold",
                "classification_top1")
        rows[mode] = {"eval": {k: evaluated[k] for k in kept},
                      "localize": {**localize_scores(records, ids, labels, boxes, root), "threshold": threshold,
                                   "threshold_source": source}}
        rows[mode]["localize_minus_best_Top1_Loc"] = rows[mode]["localize"]["Top1_Loc"] - evaluated["Top1_Loc"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--work", default="accuracy_work/shipped")
    parser.add_argument("--out", default="bench/results/shipped.json")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    record = {"command": command_line("shipped", argv), "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
              "data": "ilsvrc_dev test (450 photos); embeddings fitted on its train split (labels only)",
              "backbones": {}}
    for backbone in args.backbones.split(","):
        started = time.time()
        record["backbones"][backbone] = {**measure(backbone, work), "seconds": round(time.time() - started, 1)}
        rows = record["backbones"][backbone]
        print(f"{backbone}: " + "  ".join(f"{m} eval Top-1 Loc {r['eval']['Top1_Loc']:.1f} (GT-known "
                                          f"{r['eval']['GT_known_Loc']:.1f}), localize {r['localize']['Top1_Loc']:.1f}"
                                          f" at {r['localize']['threshold']:g}" for m, r in rows.items()
                                          if isinstance(r, dict)), flush=True)
        write_json(Path(args.out), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
