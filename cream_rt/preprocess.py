"""Image decoding and preprocessing in NumPy/OpenCV, shared by training, the eager model and
the ONNX runtime so that all of them see the same input tensors."""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from .errors import ImageReadError

__all__ = ["MAX_IMAGE_PIXELS", "configure_opencv", "read_image", "read_image_bytes", "decode_image_bytes",
           "as_rgb_array", "normalize", "resize_for_model", "preprocess_batch", "train_augment"]

# Largest image the CLI decodes, in pixels (OpenCV refuses larger ones before allocating); a header
# claiming 100000x100000 is an error for that image, not an out-of-memory kill.
MAX_IMAGE_PIXELS = int(os.environ.get("CREAM_MAX_IMAGE_PIXELS", 1 << 27))


def configure_opencv(max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Process-wide OpenCV settings the CLI makes (the library makes none): images above
    `max_pixels` refused before allocation (OpenCV reads the limit once, at its first decode;
    its own default is 2^30) and OpenCV's log silent, a bad image being reported once, as that
    image's error.

    Example:
        >>> configure_opencv()  # before the first decode, as `cream` does
    """
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # OpenCV built without the logging module
        pass


def read_image(path: str | os.PathLike, reduce_to: int | None = None, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file to RGB uint8 `(H,W,3)`; ImageReadError names the file otherwise
    (missing, unreadable, truncated, too large, not an image). `reduce_to`, `exif_orientation`:
    see `decode_image_bytes`."""
    return decode_image_bytes(read_image_bytes(path), path, reduce_to, exif_orientation)


def read_image_bytes(path: str | os.PathLike) -> np.ndarray:
    """The file's bytes as uint8; ImageReadError if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({(exc.strerror or str(exc)).lower()})") from None


def decode_image_bytes(data: np.ndarray | bytes, name: str | os.PathLike, reduce_to: int | None = None,
                       exif_orientation: bool = False) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 `(H,W,3)`; ImageReadError naming `name` if they are
    truncated, corrupt, too large or not an image (the same lines as `read_image`). The pixels
    as stored, as wsolevaluation reads them (its boxes are in that frame); `exif_orientation`
    applies the EXIF orientation tag (the displayed frame) instead. With
    `reduce_to` (the model's input size), a JPEG at least twice that size on both sides is
    decoded at 1/2, 1/4 or 1/8 scale in the DCT (libjpeg's scaled decode), never below
    `reduce_to`: 2-3x less decoding for the same resized input, slightly different pixels."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    truncated = _truncation(data)
    if truncated:
        raise ImageReadError(f"{name}: {truncated}")
    flag = cv2.IMREAD_COLOR
    if reduce_to:
        size = jpeg_dimensions(data)
        flag = REDUCED_FLAGS[reduction_factor(*size, reduce_to)] if size else flag
    if not exif_orientation:
        flag |= cv2.IMREAD_IGNORE_ORIENTATION
    try:
        img = cv2.imdecode(data, flag) if data.size else None
    except cv2.error as exc:
        too_large = "MAX_IMAGE_PIXELS" in str(exc) or "validateInputImageSize" in str(exc)
        limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30)  # OpenCV's default unless configure_opencv ran
        reason = f"larger than {limit} pixels (CREAM_MAX_IMAGE_PIXELS)" if too_large else "cannot decode"
        raise ImageReadError(f"{name}: {reason}") from None
    if img is None or img.size == 0:
        raise ImageReadError(f"{name}: not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def reduction_factor(width: int, height: int, size: int) -> int:
    """The largest of 8, 4, 2 that keeps both sides of a scaled decode (libjpeg rounds up) at
    least `size`, else 1."""
    for factor in (8, 4, 2):
        if -(-width // factor) >= size and -(-height // factor) >= size:
            return factor
    return 1


def _jpeg_headers(raw: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """Walk a JPEG's marker segments up to its first start-of-scan: ((width, height) from the
    frame header or None, the offset where the scan data starts or None where the walk ends
    first). Segment lengths skip APP segments whole, so an EXIF thumbnail's markers are never
    mistaken for the image's."""
    size, pos = None, 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return size, None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(raw[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF and pos + 9 <= len(raw):
            height, width = int.from_bytes(raw[pos + 5:pos + 7], "big"), int.from_bytes(raw[pos + 7:pos + 9], "big")
            size = (width, height) if width and height else None
        if marker == 0xDA:  # start of scan
            return size, pos + 2 + length
        pos += 2 + length
    return size, None


def jpeg_dimensions(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header, or None (not a JPEG, or no frame
    header found before the scan data)."""
    raw = data[:65536].tobytes()
    return _jpeg_headers(raw)[0] if raw.startswith(b"\xff\xd8") else None


def _truncation(data: np.ndarray) -> str | None:
    """Why a PNG or JPEG byte string is cut short or corrupt, or None: decoders fill a truncated
    file's missing rows with grey, and libpng reports CRC errors on stderr by itself. A JPEG is
    complete when an end-of-image marker follows its first scan: bytes after that marker
    (padding, a camera's trailer) are allowed, as every decoder allows them."""
    head = data[:8].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_problem(data.tobytes())
    if head.startswith(b"\xff\xd8"):
        raw = data.tobytes()
        scan = _jpeg_headers(raw)[1]
        if scan is None or raw.find(b"\xff\xd9", scan) < 0:  # entropy data stuffs 0xFF as 0xFF00
            return "truncated JPEG (no end-of-image marker after the scan data)"
    return None


def _png_problem(raw: bytes) -> str | None:
    """Walk the PNG chunks: each complete with a matching CRC, up to IEND."""
    import zlib

    pos = 8
    while pos + 12 <= len(raw):
        length = int.from_bytes(raw[pos:pos + 4], "big")
        kind = raw[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(raw):
            break
        if zlib.crc32(raw[pos + 4:end - 4]) != int.from_bytes(raw[end - 4:end], "big"):
            return f"corrupt PNG (CRC error in the {kind.decode('latin-1')!r} chunk)"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated PNG (no IEND chunk)"


def as_rgb_array(image, reduce_to: int | None = None, exif_orientation: bool = False) -> np.ndarray:
    """Accept a path, encoded bytes, a PIL image or an RGB uint8 array (gray or RGBA converted),
    each in one frame: the pixels as stored, or with `exif_orientation` as the EXIF tag of a
    file, bytes or PIL image says they are displayed (an array has no tag). A path or bytes are
    decoded with `reduce_to` (see `decode_image_bytes`)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, reduce_to, exif_orientation)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image_bytes(image, "image bytes", reduce_to, exif_orientation)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image, without importing PIL
        if exif_orientation:
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype == object:
        raise ImageReadError(f"image must be a path, a PIL image or a uint8 array, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise ImageReadError(f"image array must be uint8, got {array.dtype}")
    if array.size == 0:
        raise ImageReadError(f"image array is empty (shape {array.shape})")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[..., :3])
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageReadError(f"image array must be (H,W,3) RGB, got shape {array.shape}")
    return array


def normalize(batch_hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 `(B,H,W,3)` -> float32 `(B,3,H,W)`: x * (1/255/std) - mean/std, written channel by
    channel straight into the NCHW output (one pass instead of astype-then-transpose)."""
    scale = np.float32(1 / 255) / np.asarray(std, np.float32)
    shift = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    b, h, w, _ = batch_hwc.shape
    out = np.empty((b, 3, h, w), np.float32)
    for c in range(3):
        np.multiply(batch_hwc[..., c], scale[c], out=out[:, c], dtype=np.float32)
        out[:, c] -= shift[c]
    return out


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """Evaluation resize: the whole image to size x size (no crop), bilinear."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def preprocess_batch(images: Sequence, size: int, mean: Sequence[float], std: Sequence[float],
                     pool=None) -> np.ndarray:
    """Images (paths, PIL images, RGB uint8 arrays of any sizes) -> the model's normalised float32
    `(B,3,size,size)`. With a thread pool, decoding and resizing run in parallel (OpenCV
    releases the GIL)."""
    load = lambda im: resize_for_model(as_rgb_array(im), size)  # noqa: E731
    arrays = list(pool.map(load, images)) if pool is not None and len(images) > 1 else [load(im) for im in images]
    return normalize(np.stack(arrays), mean, std)


def train_augment(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """wsolevaluation training augmentation scaled to `size`: resize to size*256/224, random
    crop size x size, random horizontal flip."""
    big = int(round(size * 256 / 224))
    image = cv2.resize(image, (big, big), interpolation=cv2.INTER_LINEAR)
    y, x = (int(v) for v in rng.integers(0, big - size + 1, 2))
    image = image[y:y + size, x:x + size]
    return image[:, ::-1] if rng.random() < 0.5 else image
