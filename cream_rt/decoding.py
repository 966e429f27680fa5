"""Decoding images for the runtime: one image's array or the error that names why it failed, and
a background thread that decodes the next batches while the model runs."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import CreamError, ImageReadError
from .preprocess import as_rgb_array, decode_image_bytes

__all__ = ["decode_ahead", "decode_or_error"]

def decode_ahead(images: Sequence, batch_size: int, depth: int = 3, reduce_to: int | None = None,
                 exif_orientation: bool = False) -> Iterator[tuple[list, list]]:
    """Yield (inputs, decoded RGB arrays or the CreamError each raised) per batch, decoded by a
    background thread up to `depth` batches ahead, so that decoding overlaps the model. Any
    failure to decode one image becomes that image's error; a failure of the thread itself is
    re-raised here; closing the generator early stops and joins the thread. `reduce_to`:
    large JPEGs decoded at reduced scale; `exif_orientation`: the displayed frame (see
    `preprocess.decode_image_bytes`)."""
    import queue

    if batch_size < 1:
        raise CreamError(f"batch size must be at least 1, got {batch_size}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for start in range(0, len(images), batch_size):
                chunk = list(images[start:start + batch_size])
                if not put((chunk, [decode_or_error(image, reduce_to=reduce_to, exif_orientation=exif_orientation)
                                   for image in chunk])):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer, never lost
            put(exc)

    thread = threading.Thread(target=work, daemon=True, name="cream-decode-ahead")
    thread.start()
    try:
        while (item := slots.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)  # at most one image's decode; a stuck read must not block the exit


def decode_or_error(image, data: np.ndarray | bytes | None = None, reduce_to: int | None = None,
                    exif_orientation: bool = False) -> np.ndarray | CreamError:
    """The decoded RGB array, or the error that names why this one image failed; with `data`,
    those bytes (already read from the path `image`) are decoded."""
    try:
        return (as_rgb_array(image, reduce_to, exif_orientation) if data is None
                else decode_image_bytes(data, image, reduce_to, exif_orientation))
    except CreamError as exc:
        return exc
    except (OSError, ValueError, MemoryError) as exc:
        return ImageReadError(f"{image if isinstance(image, (str, os.PathLike)) else 'image'}: cannot decode "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
