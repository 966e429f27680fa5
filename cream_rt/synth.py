"""A synthetic WSOL benchmark that reproduces CAM's incomplete localization (no download).

Each object is a large textured body shared by every class plus a small "head" whose colour
and mark tell the class apart, on a cluttered textured background with distractor shapes.
The head is the most discriminative part, so CAM peaks there, while the ground-truth box and mask
cover head and body: the gap CREAM's re-activation is meant to close. Deterministic per
seed. Writes wsolevaluation metadata (boxes) plus per-image masks. numpy + OpenCV only."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_path
from .errors import CreamError
from .progress import progress

__all__ = ["BODY_COLORS", "SynthConfig", "PRESETS", "preset", "class_color", "photo_crop", "body_colors",
           "make_example", "mask_box", "generate"]

# Head colours (BGR) of up to 12 classes: distinct hues, saturated.
_HUES = np.linspace(0, 180, 12, endpoint=False).astype(np.uint8)
BODY_COLORS = ((60, 90, 140), (120, 160, 200))  # shared striped body texture (BGR)


@dataclass(frozen=True)
class SynthConfig:
    """What `cream synth` generates; the defaults are the project's benchmark (preset `default`)."""

    size: int = 96
    classes: int = 6
    train: int = 3000
    val: int = 300
    test: int = 600
    seed: int = 0
    # Faint class tint of the body (intensity units); 0 makes every body identical. Like bird
    # plumage, the body then carries weak class evidence, so a classifier represents it, while
    # the head stays by far the most discriminative part.
    body_tint: float = 0.0
    # Decoy heads: up to this many heads of other classes lying on the background without a
    # body, so that only the body tells which head is the object's (and the network must
    # encode the body: without decoys no EM can re-activate it).
    decoys: int = 2
    # Semi-major axis of the body as a fraction of the image side (drawn uniformly).
    scale: tuple[float, float] = (0.22, 0.34)
    # Distractor shapes on the background (drawn uniformly from this range).
    distractors: tuple[int, int] = (3, 8)
    # Up to this many loose patches of the striped body texture on the background, without a
    # head: background that looks like the object (false positives for any re-activation).
    body_patches: int = 0
    # Backgrounds cut from real photographs (scikit-image's sample images) instead of
    # synthetic texture.
    photo_background: bool = False
    # Final image sizes: width and height each drawn from [min, max] (the scene is drawn at
    # `size` and resized, so objects stretch with the aspect ratio); None keeps size x size.
    size_range: tuple[int, int] | None = None


# Named settings of what decides whether re-activation can work (docs/accuracy.md).
PRESETS: dict[str, dict] = {
    "default": {},  # decoy heads, identical bodies: the body is the only cue that separates object from decoys
    "no-decoys": {"decoys": 0},  # nothing forces the network to encode the body: CAM's ceiling case
    "tinted": {"body_tint": 24.0},  # the body carries class evidence too, so CAM already covers more of it
    "small": {"scale": (0.12, 0.2)},  # small objects: few feature cells per object
    "clutter": {"body_patches": 2, "distractors": (8, 16)},  # body-like background patches
    "photo": {"photo_background": True, "size_range": (80, 160)},  # photographic backgrounds, varied sizes
}


def preset(name: str, **overrides) -> SynthConfig:
    """The SynthConfig of a named preset, with field overrides (train/val/test counts, seed)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synth preset {name!r}; expected one of {', '.join(PRESETS)}")
    return SynthConfig(**{**PRESETS[name], **overrides})


def class_color(label: int) -> tuple[int, int, int]:
    """The BGR colour of class `label` (a fixed hue per class)."""
    hsv = np.uint8([[[_HUES[label % len(_HUES)], 230, 235]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _head(img: np.ndarray, center: tuple[int, int], r: int, label: int) -> None:
    """A class head: a disk of the class colour with a dark mark offset by class."""
    cv2.circle(img, center, r, class_color(label), -1)
    ox = int(np.cos(label * 2 * np.pi / 6) * r * 0.4)
    oy = int(np.sin(label * 2 * np.pi / 6) * r * 0.4)
    cv2.circle(img, (center[0] + ox, center[1] + oy), max(1, r // 3), (20, 20, 20), -1)


def _background(size: int, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    if config.photo_background:
        img = photo_crop(size, rng)
    else:
        low = cv2.resize(rng.uniform(40, 200, (4, 4, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
        texture = rng.normal(0, 18, (size, size, 1)).astype(np.float32)
        img = np.clip(low + texture, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(config.distractors[0], config.distractors[1] + 1)):  # grey-ish shapes and lines
        color = tuple(int(c) for c in rng.integers(30, 220) + rng.integers(-25, 25, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(size // 20, size // 8))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + r, y + r // 2 + 1), color, -1)
        elif kind == 1:
            cv2.line(img, (x, y), tuple(int(v) for v in rng.integers(0, size, 2)), color, 2)
        else:
            pts = (np.array([[x, y]]) + rng.integers(-r, r, (3, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
    return img


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled colour photographs (BGR), no download; see docs/accuracy.md for
    their sources and licences."""
    try:
        from skimage import data
    except ImportError:
        raise CreamError("photographic backgrounds need scikit-image (pip install scikit-image)") from None
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
    return tuple(cv2.cvtColor(np.ascontiguousarray(getattr(data, n)()[..., :3]), cv2.COLOR_RGB2BGR) for n in names)


def photo_crop(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (a quarter to all of the shorter side) of one bundled photo."""
    photo = _photos()[int(rng.integers(len(_photos())))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def body_colors(label: int, tint: float) -> tuple[np.ndarray, np.ndarray]:
    """The two stripe colours of the body, shifted by a faint class-dependent tint."""
    angle = label * 2 * np.pi / 6
    shift = tint * np.array([np.cos(angle), np.sin(angle), -np.cos(angle)])
    return tuple(np.clip(np.array(c, np.float64) + shift, 0, 255).astype(np.uint8) for c in BODY_COLORS)


def _striped(size: int, cx: float, cy: float, angle: float, label: int, tint: float) -> np.ndarray:
    """The body texture over the whole image: stripes across the minor axis at `angle`."""
    yy, xx = np.mgrid[0:size, 0:size]
    theta = np.deg2rad(angle)
    phase = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / max(2.0, size / 24)
    stripes = (np.floor(phase) % 2).astype(bool)
    dark, light = body_colors(label, tint)
    return np.where(stripes[..., None], dark, light)


def _draw_object(img: np.ndarray, label: int, rng: np.random.Generator, tint: float = 0.0,
                 scale: tuple[float, float] = (0.22, 0.34)) -> np.ndarray:
    """Draw body and head; return the object's mask (uint8 0/1)."""
    size = img.shape[0]
    a = rng.uniform(*scale) * size  # semi-major axis of the body
    b = a * rng.uniform(0.45, 0.65)
    angle = rng.uniform(0, 360)
    margin = a + 0.12 * size
    cx, cy = rng.uniform(margin, size - margin, 2) if size - 2 * margin > 0 else (size / 2, size / 2)
    body = np.zeros((size, size), np.uint8)
    cv2.ellipse(body, (int(cx), int(cy)), (int(a), int(b)), angle, 0, 360, 1, -1)
    body_img = _striped(size, cx, cy, angle, label, tint)  # shared body texture
    img[body == 1] = body_img[body == 1]
    theta = np.deg2rad(angle)
    # class head at one end of the major axis, partly overlapping the body
    r = max(2, int(a * rng.uniform(0.28, 0.36)))
    hx = int(cx + np.cos(theta) * (a + r * 0.3))
    hy = int(cy + np.sin(theta) * (a + r * 0.3))
    head = np.zeros((size, size), np.uint8)
    cv2.circle(head, (hx, hy), r, 1, -1)
    _head(img, (hx, hy), r, label)
    mask = np.maximum(body, head)
    return mask


def _free_disk(size: int, r: int, keep_out: np.ndarray, rng: np.random.Generator) \
        -> tuple[tuple[int, int], np.ndarray] | None:
    """(centre, mask) of a disk of radius r that does not touch `keep_out` (20 tries), or None."""
    for _attempt in range(20):
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        disk = np.zeros_like(keep_out)
        cv2.circle(disk, (cx, cy), r, 1, -1)
        if not (disk & keep_out).any():
            return (cx, cy), disk
    return None


def _draw_decoys(img: np.ndarray, label: int, config: SynthConfig, rng: np.random.Generator,
                 keep_out: np.ndarray) -> None:
    """Heads of other classes, off the object, with no body, sized as real heads."""
    size, classes = img.shape[0], config.classes
    for _ in range(int(rng.integers(0, config.decoys + 1))):
        r = max(2, int(rng.uniform(*config.scale) * size * rng.uniform(0.28, 0.36)))
        found = _free_disk(size, r, keep_out, rng)
        if found is not None:
            other = (label + int(rng.integers(1, classes))) % classes
            _head(img, found[0], r, other)
            keep_out |= cv2.dilate(found[1], np.ones((5, 5), np.uint8))


def _draw_body_patches(img: np.ndarray, label: int, tint: float, count: int, rng: np.random.Generator,
                       keep_out: np.ndarray) -> None:
    """Loose disks of the striped body texture (no head) on the background."""
    size = img.shape[0]
    for _ in range(int(rng.integers(0, count + 1))):
        r = max(3, int(rng.uniform(0.08, 0.14) * size))
        found = _free_disk(size, r, keep_out, rng)
        if found is not None:
            disk = found[1]
            texture = _striped(size, 0.0, 0.0, rng.uniform(0, 360), label, tint)
            img[disk == 1] = texture[disk == 1]
            keep_out |= cv2.dilate(disk, np.ones((5, 5), np.uint8))


def make_example(label: int, rng: np.random.Generator, config: SynthConfig | None = None) \
        -> tuple[np.ndarray, np.ndarray]:
    """One image (BGR uint8) of class `label` and its object mask (uint8 0/1), as `config` says."""
    config = config or SynthConfig()
    size = config.size
    img = _background(size, rng, config)
    mask = _draw_object(img, label, rng, config.body_tint, config.scale)
    keep_out = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    if config.decoys:
        _draw_decoys(img, label, config, rng, keep_out)
    if config.body_patches:
        _draw_body_patches(img, label, config.body_tint, config.body_patches, rng, keep_out)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    if config.size_range is not None:
        w, h = (int(v) for v in rng.integers(config.size_range[0], config.size_range[1] + 1, 2))
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, mask


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive pixel box of a mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def generate(out: str | os.PathLike, config: SynthConfig | None = None, show_progress: bool = True) -> Path:
    """Write `out/images/<split>/<class>/<n>.png`, `out/masks/...` and
    `out/metadata/<split>/*.txt`; returns `out`."""
    config = config or SynthConfig()
    root = Path(out)
    if config.classes < 2 or config.classes > len(_HUES):
        raise ValueError(f"classes must lie in [2, {len(_HUES)}], got {config.classes}")
    if config.size < 32:
        raise ValueError(f"size must be at least 32, got {config.size}")
    if config.size_range is not None and not 32 <= config.size_range[0] <= config.size_range[1]:
        raise ValueError(f"size_range must be [min, max] with 32 <= min <= max, got {config.size_range}")
    names = [f"class{c:02d}" for c in range(config.classes)]
    for s_index, (split, count) in enumerate((("train", config.train), ("val", config.val), ("test", config.test))):
        rng = np.random.default_rng([config.seed, s_index])
        rows = []
        for n in progress(range(count), f"synth {split}", unit="img", enabled=None if show_progress else False):
            label = n % config.classes
            img, mask = make_example(label, rng, config)
            image_id = f"{split}/{names[label]}/{n:06d}.png"
            for folder, array in (("images", img), ("masks", mask * 255)):
                path = root / folder / image_id
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), array)
            rows.append((image_id, label, mask_box(mask), img.shape[1], img.shape[0]))
        meta = root / "metadata" / split
        meta.mkdir(parents=True, exist_ok=True)
        files = {
            "image_ids.txt": "".join(f"{i}\n" for i, *_ in rows),
            "class_labels.txt": "".join(f"{i},{label}\n" for i, label, *_ in rows),
            "image_sizes.txt": "".join(f"{i},{w},{h}\n" for i, _, _, w, h in rows),
            "localization.txt": "".join(f"{i},{b[0]},{b[1]},{b[2]},{b[3]}\n" for i, _, b, _, _ in rows),
        }
        for name, text in files.items():
            with atomic_path(meta / name) as tmp:
                tmp.write_text(text)
    with atomic_path(root / "class_names.txt") as tmp:
        tmp.write_text("".join(f"{n}\n" for n in names))
    return root
