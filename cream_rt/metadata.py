"""Readers for the wsolevaluation metadata layout (`<split>/image_ids.txt`, `class_labels.txt`,
`image_sizes.txt`, `localization.txt` with boxes or mask files). No torch."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MetadataError

__all__ = ["MAX_CLASSES", "SplitMetadata", "read_split", "data_paths", "split_folder", "split_paths", "resize_box"]

Box = tuple[float, float, float, float]
MAX_CLASSES = 100_000  # labels are 0..C-1; a larger label is a broken file, not a classifier to size


@dataclass
class SplitMetadata:
    """One split: image ids in file order, labels, sizes, and boxes or masks per image."""

    root: Path
    image_ids: list[str]
    class_labels: dict[str, int]
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (width, height)
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # original-image pixel coords
    mask_paths: dict[str, list[str]] = field(default_factory=dict)
    ignore_paths: dict[str, str] = field(default_factory=dict)

    @property
    def has_boxes(self) -> bool:
        return bool(self.boxes)

    @property
    def has_masks(self) -> bool:
        return bool(self.mask_paths)

    @property
    def num_classes(self) -> int:
        return max(self.class_labels.values()) + 1 if self.class_labels else 0


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines; tolerant of a missing final newline."""
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, 1) if line.strip()]
    except UnicodeDecodeError:
        raise MetadataError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read ({(exc.strerror or exc.__class__.__name__).lower()})") from None


def _fields(path: Path, lineno: int, line: str, count: int, what: str) -> list[str]:
    parts = line.split(",")
    if len(parts) != count:
        raise MetadataError(f"{path}:{lineno}: expected {what}, got {line!r}")
    return parts


def _number(path: Path, lineno: int, text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise MetadataError(f"{path}:{lineno}: {what} must be {kind.__name__}, got {text!r}") from None


def _known(path: Path, lineno: int, image_id: str, ids: set[str]) -> None:
    if image_id not in ids:
        raise MetadataError(f"{path}:{lineno}: image id {image_id!r} is not in image_ids.txt")


def read_split(split_dir: str | os.PathLike, require_localization: bool = True) -> SplitMetadata:
    """Read a wsolevaluation split folder; raise MetadataError naming file and line on bad input."""
    root = Path(split_dir)
    if not root.is_dir():
        parent = root.parent
        splits = sorted(p.name for p in parent.iterdir() if (p / "image_ids.txt").is_file()) if parent.is_dir() else []
        raise MetadataError(f"{root}: metadata split folder not found"
                            + (f"; {parent} has the splits {', '.join(splits)}" if splits else ""))
    ids_path = root / "image_ids.txt"
    image_ids = [line.strip() for _, line in _read_lines(ids_path)]
    if not image_ids:
        raise MetadataError(f"{ids_path}: the split lists no images")
    if len(set(image_ids)) != len(image_ids):
        first = {i: n for n, i in reversed(list(enumerate(image_ids)))}
        dup = next(i for n, i in enumerate(image_ids) if first[i] != n)  # the first id listed a second time
        raise MetadataError(f"{ids_path}: image id {dup!r} is listed twice")
    ids = set(image_ids)

    labels_path = root / "class_labels.txt"
    labels: dict[str, int] = {}
    for n, line in _read_lines(labels_path):
        image_id, label = _fields(labels_path, n, line, 2, "'<image_id>,<label>'")
        _known(labels_path, n, image_id, ids)
        value = _number(labels_path, n, label, int, "the class label")
        if not 0 <= value < MAX_CLASSES:
            raise MetadataError(f"{labels_path}:{n}: class label must lie in [0, {MAX_CLASSES - 1}], got {label}")
        if image_id in labels:
            raise MetadataError(f"{labels_path}:{n}: image id {image_id!r} is labelled twice")
        labels[image_id] = value
    _require_all(labels_path, image_ids, labels)

    meta = SplitMetadata(root=root, image_ids=image_ids, class_labels=labels)

    sizes_path = root / "image_sizes.txt"
    if sizes_path.is_file():
        for n, line in _read_lines(sizes_path):
            image_id, w, h = _fields(sizes_path, n, line, 3, "'<image_id>,<width>,<height>'")
            _known(sizes_path, n, image_id, ids)
            width = _number(sizes_path, n, w, int, "the width")
            height = _number(sizes_path, n, h, int, "the height")
            if width <= 0 or height <= 0:
                raise MetadataError(f"{sizes_path}:{n}: image size must be positive, got {w}x{h}")
            if image_id in meta.image_sizes:
                raise MetadataError(f"{sizes_path}:{n}: image id {image_id!r} has two sizes")
            meta.image_sizes[image_id] = (width, height)
        _require_all(sizes_path, image_ids, meta.image_sizes)

    loc_path = root / "localization.txt"
    if not loc_path.is_file():
        if require_localization:
            raise MetadataError(f"{loc_path}: localization file not found (this split has image labels only, "
                                "as wsolevaluation's train splits do: boxes are scored on val or test)")
        return meta
    lines = _read_lines(loc_path)
    # Box files have 5 fields a line; mask files (OpenImages) have 3.
    if lines and len(lines[0][1].split(",")) == 3:
        _read_masks(loc_path, lines, ids, meta)
        _require_all(loc_path, image_ids, meta.mask_paths)
        missing_ignore = [i for i in image_ids if i not in meta.ignore_paths]
        if missing_ignore:
            raise MetadataError(f"{loc_path}: no ignore mask for image id {missing_ignore[0]!r}")
    else:
        _read_boxes(loc_path, lines, ids, meta)
        _require_all(loc_path, image_ids, meta.boxes)
    return meta


def _read_boxes(path: Path, lines, ids: set[str], meta: SplitMetadata) -> None:
    for n, line in lines:
        image_id, *coords = _fields(path, n, line, 5, "'<image_id>,<x0>,<y0>,<x1>,<y1>'")
        _known(path, n, image_id, ids)
        x0, y0, x1, y1 = (_number(path, n, c, float, "a box coordinate") for c in coords)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise MetadataError(f"{path}:{n}: box coordinates must be finite numbers, got {','.join(coords)}")
        if x1 < x0 or y1 < y0 or x0 < 0 or y0 < 0:
            raise MetadataError(f"{path}:{n}: box must have 0 <= x0 <= x1 and 0 <= y0 <= y1, "
                                f"got {x0:g},{y0:g},{x1:g},{y1:g}")
        size = meta.image_sizes.get(image_id)
        if size is not None and (x1 > size[0] or y1 > size[1]):
            raise MetadataError(f"{path}:{n}: box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the "
                                f"{size[0]}x{size[1]} image {image_id!r}")
        meta.boxes.setdefault(image_id, []).append((x0, y0, x1, y1))


def _read_masks(path: Path, lines, ids: set[str], meta: SplitMetadata) -> None:
    for n, line in lines:
        image_id, mask, ignore = _fields(path, n, line, 3, "'<image_id>,<mask_png>,<ignore_png>'")
        _known(path, n, image_id, ids)
        if not mask:
            raise MetadataError(f"{path}:{n}: mask path is empty")
        meta.mask_paths.setdefault(image_id, []).append(mask)
        if ignore:
            meta.ignore_paths.setdefault(image_id, ignore)


def _require_all(path: Path, image_ids: list[str], mapping: dict) -> None:
    if len(mapping) != len(image_ids):
        missing = next(i for i in image_ids if i not in mapping)
        raise MetadataError(f"{path}: image id {missing!r} from image_ids.txt has no entry "
                            f"({len(image_ids) - len(mapping)} missing)")


def data_paths(data: str | os.PathLike | None, images: str | os.PathLike | None = None,
               metadata: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(image root, metadata root with one folder per split) from a data root (`DATA/images`,
    `DATA/metadata`), either part overridden, or from both parts given."""
    if data:
        return Path(images or Path(data) / "images"), Path(metadata or Path(data) / "metadata")
    if images and metadata:
        return Path(images), Path(metadata)
    raise MetadataError("pass --data DIR (images/ and metadata/) or both --images and --metadata")


def split_folder(folder: str | os.PathLike, split: str) -> Path:
    """A `--metadata` folder as a split folder: itself, or FOLDER/SPLIT where it is a metadata
    root (what `cream train --metadata` takes) and has no image_ids.txt of its own."""
    folder = Path(folder)
    if not (folder / "image_ids.txt").is_file() and (folder / split / "image_ids.txt").is_file():
        return folder / split
    return folder


def split_paths(data: str | os.PathLike | None, split: str = "test", images: str | os.PathLike | None = None,
                split_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(metadata split folder, image root): `DATA/metadata/SPLIT` and `DATA/images` unless
    `split_dir` / `images` name them. `split_dir` may also be a metadata root holding SPLIT/
    (what `cream train --metadata` takes)."""
    split_dir = split_folder(split_dir, split) if split_dir else None
    if split_dir and images:
        return Path(split_dir), Path(images)
    if not data:
        raise MetadataError("pass --data DIR [--split NAME], or --metadata SPLIT_DIR with --images DIR")
    image_root, meta_root = data_paths(data, images)
    return Path(split_dir or meta_root / split), image_root


def resize_box(box: Box, image_size: tuple[int, int], resize: tuple[int, int]) -> tuple[int, int, int, int]:
    """Scale an original-image box to the evaluation size as wsolevaluation does:
    `int(coord * new / old)` per coordinate, left to right in float64."""
    width, height = image_size
    new_w, new_h = resize
    x0, y0, x1, y1 = box
    return (int(x0 * new_w / width), int(y0 * new_h / height),
            int(x1 * new_w / width), int(y1 * new_h / height))
