"""`cream localize`: batched localization through ONNX Runtime with a bounded prefetch queue;
a bad image is reported (stderr and output) while the rest go on. The results file and the
map/overlay folders are written atomically: an error or a signal leaves the previous ones."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..argtypes import BATCH_SIZE, int_in
from ..atomic import atomic_dir, atomic_open, check_output_dir, check_output_file
from ..errors import CreamError, OutputError
from ..session import ENGINES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def collect_inputs(inputs: list[str], image_root: str | None) -> list[Path]:
    """Image files, folders (recursively), text files of paths, or metadata split folders."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and (path / "image_ids.txt").is_file():
            if not image_root:
                raise CreamError(f"{path}: a metadata split needs --images ROOT")
            from ..metadata import read_split

            paths += [Path(image_root) / i for i in read_split(path, require_localization=False).image_ids]
        elif path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() == ".txt" and path.is_file():
            try:
                paths += [Path(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise CreamError(f"{path}: not a readable text file of image paths "
                                 f"({exc.__class__.__name__})") from None
        elif not path.exists():  # a mistyped argument: one error line, no results file
            raise CreamError(f"{path}: no such file or folder (expected an image, a folder of images, a text "
                             "file of paths or a metadata split folder)")
        else:
            paths.append(path)  # an unreadable file is reported per image; so is a missing one a list names
    if not paths:
        raise CreamError(f"no images found in {', '.join(inputs)}")
    return paths


def resolve_threshold(value: str | None) -> float | None:
    """A number, or the best threshold recorded by `cream eval --json` (MaxBoxAcc_threshold);
    None: the model's default."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise CreamError(f"--threshold: expected a number or a `cream eval --json` file, got {value!r}")
    try:
        result = json.loads(path.read_text())
        return float(result["MaxBoxAcc_threshold"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CreamError(f"{path}: not a `cream eval --json` result (no MaxBoxAcc_threshold)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream localize`'s arguments."""
    p.add_argument("inputs", nargs="+", help="image files, folders, text files of paths, or metadata split folders")
    p.add_argument("--model", required=True, help="exported ONNX model")
    p.add_argument("--out", required=True, help="results file (.jsonl, or .json with --format coco)")
    p.add_argument("--images", help="image root for metadata split inputs")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=8)
    p.add_argument("--threshold", default=None,
                   help="box threshold as a fraction of the map's max, or a `cream eval --json` output file whose "
                        "best threshold (MaxBoxAcc_threshold) to use. Default: the model's `cream tune` threshold, "
                        "else its backbone's shipped threshold for CAM or CREAM (`cream backbones --json`), else "
                        "0.2 with a warning (0.35 of the 90th percentile for a PaS model)")
    p.add_argument("--exif-orientation", action="store_true",
                   help="apply each photo's EXIF orientation tag (boxes in the displayed frame); default: the "
                        "pixels as stored, the frame wsolevaluation's boxes use")
    p.add_argument("--all-contours", action="store_true", help="one box per contour (default: largest)")
    p.add_argument("--format", choices=["jsonl", "coco"], default="jsonl")
    p.add_argument("--save-maps", help="write <name>.npy score maps here")
    p.add_argument("--overlays", help="write overlay PNGs here (ground-truth boxes in red for a metadata split)")
    p.add_argument("--overlays-compare", metavar="MODEL",
                   help="with --overlays: another export of the same network (e.g. its CAM export) drawn on the "
                        "left of this model's overlay (CAM | CREAM)")
    p.add_argument("--providers", help="comma-separated ONNX Runtime providers")
    p.add_argument("--engine", choices=ENGINES, default="onnxruntime",
                   help="what runs the model: ONNX Runtime, or OpenVINO's CPU plugin in fp32 or bf16 (faster on CPUs "
                        "with bf16 or VNNI: pip install 'cream-rt[openvino]')")
    p.add_argument("--reduced-decode", action="store_true",
                   help="decode JPEGs at least 2x the model's input size at 1/2, 1/4 or 1/8 scale (libjpeg's DCT "
                        "scaling): faster on large photos, maps slightly different from a full decode")
    ray = p.add_argument_group("Ray Data (pip install 'cream-rt[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="run on Ray Data: --out is a folder of result shards plus manifest.json; a re-run on the "
                          "same folder skips the inputs already written")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="a running Ray cluster (HOST:PORT of `ray start --head`, or auto); default: a local Ray")
    ray.add_argument("--actors", type=int_in(1, 4096), default=None,
                     help="ONNX Runtime actors, one session each (default 2)")
    ray.add_argument("--actor-threads", type=int_in(1, 256), default=None,
                     help="intra-op threads per actor (default 1)")
    ray.add_argument("--shard-format", choices=["jsonl", "parquet"], default=None,
                     help="result shards as JSON lines (default) or Parquet")
    p.add_argument("--json", action="store_true", help="print the run's summary as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    """`cream localize` with the parsed arguments; returns the exit status."""
    from ..runtime import Localizer

    if args.ray:
        return run_ray(args)
    ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--actors", args.actors),
                                         ("--actor-threads", args.actor_threads),
                                         ("--shard-format", args.shard_format)) if value]
    if ray_only:
        raise CreamError(f"{ray_only[0]} goes with --ray")
    check_output_file(args.out, "--out")
    for flag, folder in (("--save-maps", args.save_maps), ("--overlays", args.overlays)):
        if folder:
            check_output_dir(folder, flag)
    if args.overlays_compare and not args.overlays:
        raise CreamError("--overlays-compare goes with --overlays")
    paths = collect_inputs(args.inputs, args.images)
    truth = ground_truth(args.inputs, args.images)
    providers = args.providers.split(",") if args.providers else None
    with contextlib.ExitStack() as stack:
        threshold = resolve_threshold(args.threshold)
        localizer = stack.enter_context(Localizer.load(args.model, providers, threshold, args.all_contours,
                                                       exif_orientation=args.exif_orientation, engine=args.engine))
        compare = None
        if args.overlays_compare:
            compare = stack.enter_context(Localizer.load(args.overlays_compare, providers, threshold,
                                                         args.all_contours, exif_orientation=args.exif_orientation,
                                                         engine=args.engine))
            if compare.manifest.class_names != localizer.manifest.class_names:
                raise CreamError(f"--overlays-compare {args.overlays_compare}: another network's export (its "
                                 f"classes differ from {args.model}'s)")
        maps_dir = stack.enter_context(atomic_dir(args.save_maps, "--save-maps")) if args.save_maps else None
        overlay_dir = stack.enter_context(atomic_dir(args.overlays, "--overlays")) if args.overlays else None
        records = localize_all(localizer, paths, args.batch_size, maps_dir, overlay_dir,
                               localizer.manifest.input_size if args.reduced_decode else None, truth, compare)
        with atomic_open(args.out, what="--out") as handle:
            if args.format == "coco":
                json.dump(coco_detections(records, localizer.manifest.class_names), handle)
            else:
                for record in records:
                    handle.write(json.dumps(record) + "\n")
    failures = sum("error" in r for r in records)
    if args.json:
        from .output import print_json

        print_json({"out": str(args.out), "images": len(records), "localized": len(records) - failures,
                    "failed": failures, "engine": args.engine, "threshold": localizer.threshold,
                    "threshold_source": localizer.threshold_source})
    print(f"localized {len(records) - failures} of {len(records)} images -> {args.out}"
          + (f" ({failures} failed)" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def run_ray(args: argparse.Namespace) -> int:
    """`--ray`: the same records through Ray Data, as shards in the folder --out."""
    from ..progress import progress_enabled
    from ..ray_localize import import_ray, localize_ray
    from .output import print_json

    unsupported = [flag for flag, value in (("--save-maps", args.save_maps), ("--overlays", args.overlays),
                                            ("--overlays-compare", args.overlays_compare),
                                            ("--format coco", args.format == "coco"),
                                            ("--providers", args.providers),
                                            ("--reduced-decode", args.reduced_decode)) if value]
    if unsupported:
        raise CreamError(f"{unsupported[0]} is not available with --ray (it writes record shards only)")
    if args.engine != "onnxruntime":
        raise CreamError(f"--engine {args.engine} goes without --ray (the Ray actors run ONNX Runtime)")
    import_ray()  # one line saying how to install it, before any work
    paths = collect_inputs(args.inputs, args.images)
    summary = localize_ray([str(p) for p in paths], args.model, args.out, address=args.ray_address,
                           actors=args.actors or 2, batch_size=args.batch_size, threads=args.actor_threads or 1,
                           threshold=resolve_threshold(args.threshold), all_contours=args.all_contours,
                           shard_format=args.shard_format or "jsonl", show_progress=progress_enabled(),
                           exif_orientation=args.exif_orientation)
    if args.json:
        print_json(summary)
    print(f"localized {summary['written'] - summary['errors']} of {summary['written']} images -> {args.out} "
          f"({summary['skipped']} already done, {summary['images_per_s']} img/s)"
          + (f" ({summary['errors']} failed)" if summary["errors"] else ""), file=sys.stderr)
    return 1 if summary["errors"] else 0


def ground_truth(inputs: list[str], image_root: str | None) -> dict[str, list[list[float]]]:
    """The ground-truth boxes (original pixels) of each image of the metadata split inputs that
    have boxes, by the path `collect_inputs` gives it."""
    from ..metadata import read_split

    truth: dict[str, list[list[float]]] = {}
    for item in inputs:
        path = Path(item)
        if image_root and path.is_dir() and (path / "localization.txt").is_file():
            meta = read_split(path)
            truth.update({str(Path(image_root) / i): [list(map(float, b)) for b in meta.boxes[i]]
                          for i in meta.image_ids})
    return truth


def localize_all(localizer, paths: list[Path], batch_size: int, maps_dir: Path | None,
                 overlay_dir: Path | None, reduce_to: int | None = None,
                 truth: dict[str, list[list[float]]] | None = None, compare=None) -> list[dict]:
    """One record per input in order (`Localizer.stream`): the result, or the image's error (also
    on stderr); `reduce_to`: large JPEGs decoded at reduced scale for a model of that input size.
    Where `truth` has the image's boxes, its record gets them and the best IoU of its boxes
    (`gt_boxes`, `iou`) and its overlay shows them; `compare` (another Localizer) draws its own
    overlay on the left."""
    from tqdm import tqdm

    from ..progress import progress_enabled
    from ..runtime import result_record

    names = output_names(paths)
    records: list[dict] = []
    with tqdm(total=len(paths), desc="localize", unit="img", disable=not progress_enabled(), file=sys.stderr) as bar:
        for path, decoded, result in localizer.stream(paths, batch_size=batch_size, reduce_to=reduce_to,
                                                      return_maps=bool(maps_dir or overlay_dir)):
            bar.update(1)
            name = names[len(records)]
            record = result_record(path, result)
            records.append(record)
            if isinstance(result, Exception):
                print(f"cream: error: {result}", file=sys.stderr)
                continue
            gt = (truth or {}).get(str(path))
            if gt is not None:
                record["gt_boxes"], record["iou"] = gt, best_iou(result.boxes, gt)
            if maps_dir:
                _save_map(maps_dir / f"{name}.npy", result.map)
            if overlay_dir:
                other = None if compare is None else compare.localize_decoded([decoded], [result.class_id],
                                                                              return_maps=True)[0]
                labels = (f"{compare.manifest.mode.upper()}: ", f"{localizer.manifest.mode.upper()}: ") \
                    if compare is not None else ("", "")
                _save_overlay(overlay_dir / f"{name}.png", decoded, result, gt or (), other, labels)
    return records


def best_iou(boxes, gt_boxes) -> float:
    """The best IoU of a predicted box with a ground-truth box (the protocol's +1 convention)."""
    from ..boxes import iou_matrix

    if not len(boxes) or not len(gt_boxes):
        return 0.0
    return round(float(iou_matrix(np.asarray(boxes), np.asarray(gt_boxes)).max()), 4)


def coco_detections(records: list[dict], names: list[str]) -> dict:
    """COCO-style results: images, categories and detections with bbox [x, y, w, h]."""
    images, detections = [], []
    for image_id, record in enumerate(records):
        if "error" in record:
            continue
        width, height = record["image_size"]
        images.append({"id": image_id, "file_name": record["image"], "width": width, "height": height})
        for x0, y0, x1, y1 in record["boxes"]:
            detections.append({"image_id": image_id, "category_id": record["class_id"],
                               "bbox": [x0, y0, round(x1 - x0 + 1, 2), round(y1 - y0 + 1, 2)],
                               "score": record["score"]})
    return {"images": images, "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
            "annotations": detections}


def output_names(paths: list[Path]) -> list[str]:
    """Per input, a relative output name without suffix that no other input shares: the path
    below the inputs' common folder (`a/x/img`, `b/x/img`), with the suffix kept where two
    inputs differ only by it (`img.jpg`, `img.png`)."""
    absolute = [os.path.abspath(p) for p in paths]
    parents = [os.path.dirname(a) for a in absolute]
    common = os.path.commonpath(parents) if parents else ""
    stems = [os.path.splitext(os.path.relpath(a, common))[0] for a in absolute]
    owners: dict[str, set[str]] = {}
    for stem, a in zip(stems, absolute):
        owners.setdefault(stem, set()).add(a)
    return [os.path.relpath(a, common) if len(owners[stem]) > 1 else stem for stem, a in zip(stems, absolute)]


def _save_map(target: Path, scoremap: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, scoremap)


def _save_overlay(target: Path, image: np.ndarray, result, gt_boxes=(), compare=None,
                  labels: tuple[str, str] = ("", "")) -> None:
    import cv2

    from ..overlay import draw_overlay, side_by_side

    def caption(r, label: str) -> str:
        iou = f", IoU {best_iou(r.boxes, gt_boxes):.2f}" if len(gt_boxes) else ""
        return f"{label}{r.class_name} {r.score:.2f}{iou}"

    out = draw_overlay(image, result.map, result.boxes, caption(result, labels[1]), gt_boxes)
    if compare is not None and not isinstance(compare, Exception):
        left = draw_overlay(image, compare.map, compare.boxes, caption(compare, labels[0]), gt_boxes)
        out = side_by_side(left, out)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), out):
        raise OutputError(f"--overlays: cannot write {target}")
