"""`cream localize`: batched localization through ONNX Runtime with a bounded prefetch queue;
a bad image is reported (stderr and output) while the rest go on; the output is atomic."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_open
from ..errors import CreamError

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
            paths += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
        else:
            paths.append(path)  # a missing file is reported per image, like a corrupt one
    if not paths:
        raise CreamError(f"no images found in {', '.join(inputs)}")
    return paths


def resolve_threshold(value: str) -> float:
    """A number, or the best threshold recorded by `cream eval --json` (MaxBoxAcc_threshold)."""
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


def run(args: argparse.Namespace) -> int:
    from ..runtime import Localizer, decode_ahead

    providers = args.providers.split(",") if args.providers else None
    localizer = Localizer.load(args.model, providers, resolve_threshold(args.threshold), args.all_contours)
    paths = collect_inputs(args.inputs, args.images)
    names = localizer.manifest.class_names
    failures = 0
    records: list[dict] = []
    from tqdm import tqdm

    from ..progress import progress_enabled

    bar = tqdm(total=len(paths), desc="localize", unit="img", disable=not progress_enabled(), file=sys.stderr)
    for chunk, decoded in decode_ahead(paths, args.batch_size):
        bar.update(len(chunk))
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        results = localizer([decoded[i] for i in good], return_maps=bool(args.save_maps or args.overlays))
        by_index = dict(zip(good, results))
        for i, path in enumerate(chunk):
            if i not in by_index:
                failures += 1
                print(f"cream: error: {decoded[i]}", file=sys.stderr)
                records.append({"image": str(path), "error": str(decoded[i])})
                continue
            result = by_index[i]
            records.append({"image": str(path), **result.to_dict()})
            if args.save_maps:
                _save_map(Path(args.save_maps), path, result.map)
            if args.overlays:
                _save_overlay(Path(args.overlays), path, decoded[i], result)
    bar.close()
    with atomic_open(args.out) as handle:
        if args.format == "coco":
            json.dump(coco_detections(records, names), handle)
        else:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    done = len(records) - failures
    print(f"localized {done} of {len(records)} images -> {args.out}" + (f" ({failures} failed)" if failures else ""),
          file=sys.stderr)
    return 1 if failures else 0


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


def _flat_name(path: Path) -> str:
    """`<parent>_<stem>`: unique enough for a folder of outputs, no double suffix."""
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def _save_map(folder: Path, path: Path, scoremap: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{_flat_name(path)}.npy", scoremap)


def _save_overlay(folder: Path, path: Path, image: np.ndarray, result) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    heat = cv2.resize((result.map * 255).astype(np.uint8), (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_CUBIC)
    out = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 0.55,
                          cv2.applyColorMap(heat, cv2.COLORMAP_JET), 0.45, 0)
    for x0, y0, x1, y1 in result.boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
    cv2.putText(out, f"{result.class_name} {result.score:.2f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1)
    cv2.imwrite(str(folder / f"{_flat_name(path)}.png"), out)
