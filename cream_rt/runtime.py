"""The torch-free runtime: batched localization over an exported model (`Localizer`), boxes in
original image coordinates. numpy, OpenCV and onnxruntime only; the session and predictor are
`session.py`, decoding `decoding.py` (both re-exported here)."""
from __future__ import annotations

import functools
import logging
import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from .boxes import PAS_THETA, fractions_to_box, map_boxes, scale_boxes
from .decoding import decode_ahead, decode_or_error
from .errors import CreamError
from .manifest import Manifest
from .preprocess import as_rgb_array, preprocess_batch
from .session import (
    DEFAULT_PROVIDERS,
    ENGINES,
    OnnxPredictor,
    class_id_array,
    load_predictor,
    make_session,
    read_manifest,
)

if TYPE_CHECKING:
    from .openvino_session import OpenVinoPredictor

__all__ = ["DEFAULT_PROVIDERS", "ENGINES", "make_session", "read_manifest", "OnnxPredictor", "Localization", "softmax",
           "decode_ahead", "decode_or_error", "box_threshold", "announce_fallback", "Localizer", "result_record",
           "load"]

OnError = Literal["raise", "return"]  # what Localizer does with an image it cannot decode
Decoded = np.ndarray | CreamError  # an RGB image, or why it could not be decoded
DEFAULT_THRESHOLD = 0.2  # box threshold of a model with no tuned or network threshold (CAM's usual value)
_log = logging.getLogger(__name__)


@dataclass
class Localization:
    """One image's result: class, score (softmax probability), boxes `[x0,y0,x1,y1]` in the
    original image's pixels (inclusive), and the score map at model resolution if asked."""

    class_id: int
    class_name: str
    score: float
    boxes: list[list[float]]
    image_size: tuple[int, int]  # (width, height)
    map: np.ndarray | None = field(default=None, repr=False)
    box_source: str = "map"  # "map" (thresholded score map) or "regressor" (CREAM's box regressor)

    def to_dict(self) -> dict:
        return {"class_id": self.class_id, "class_name": self.class_name, "score": self.score,
                "boxes": self.boxes, "image_size": list(self.image_size), "box_source": self.box_source}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of `(B,C)` logits, stable for large values."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def box_threshold(manifest: Manifest, threshold: float | None = None) -> tuple[float, str]:
    """(the box threshold, where it comes from): `threshold` ("argument"), else `cream tune`'s
    ("tuned"), else the backbone's shipped one for the export's mode ("network"), else 0.35 of
    the 90th percentile for a PaS model ("pas") or 0.2 of the max ("fallback": loose boxes on many
    photos, which callers announce). CreamError for a value outside [0, 1)."""
    candidates = (("argument", threshold), ("tuned", manifest.box_threshold), ("network", manifest.network_threshold),
                  ("pas" if manifest.pas else "fallback", PAS_THETA if manifest.pas else DEFAULT_THRESHOLD))
    source, value = next((s, v) for s, v in candidates if v is not None)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise CreamError(f"threshold must lie in [0, 1), got {value}")
    return float(value), source


def announce_fallback(path: str, threshold: float) -> None:
    """Log (a warning) that the model at `path` has no tuned or shipped box threshold."""
    _log.warning("%s has no tuned or shipped box threshold: using %g of the map's max (run `cream tune`, or pass "
                 "a threshold)", path, threshold)


class Localizer:
    """Batched localization over an exported model: images (paths, PIL images or uint8 RGB
    arrays of any size) -> class, score, boxes in original coordinates, optionally maps.

    It owns a decoding thread pool: use it as a context manager (`with Localizer.load(p) as
    loc:`) or call `close()`.

    Example:
        >>> with Localizer.load("model.onnx") as loc:  # doctest: +SKIP
        ...     result = loc("photo.jpg")[0]
        ...     print(result.class_name, result.score, result.boxes)
    """

    def __init__(self, predictor: OnnxPredictor | OpenVinoPredictor, threshold: float | None = None,
                 all_contours: bool = False, exif_orientation: bool = False):
        self.pas = bool(predictor.manifest.pas)
        m = predictor.manifest
        threshold, self.threshold_source = box_threshold(m, threshold)
        if self.threshold_source == "fallback":
            announce_fallback(predictor.path, threshold)
        self.predictor, self.threshold, self.all_contours = predictor, threshold, all_contours
        self.exif_orientation = exif_orientation
        self.manifest = m
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="cream-decode")
        self._closed = False

    @classmethod
    def load(cls, path: str | os.PathLike, providers: Sequence[str] | None = None, threshold: float | None = None,
             all_contours: bool = False, threads: int | None = None, exif_orientation: bool = False,
             engine: str = "onnxruntime") -> "Localizer":
        """Open an export made by `cream export`.

        Args:
            path: the ONNX file (its manifest gives input size, normalisation, class names).
            providers: ONNX Runtime providers in order (default: TensorRT, CUDA, CPU, those present).
            threshold: box threshold in [0, 1), a fraction of each map's max, or of its 90th
                percentile for a model exported with PaS (default: the one `cream tune` chose, in
                the manifest; else the backbone's shipped threshold for the export's mode; else
                0.2, logged as a warning, or 0.35 with PaS). `threshold_source` says which.
            all_contours: one box per contour instead of the largest contour's box.
            threads: intra-op threads (default: one per core). They do not spin between batches:
                the Localizer decodes and extracts boxes on the same cores.
            exif_orientation: apply a file's (or PIL image's) EXIF orientation tag, boxes in the
                displayed frame; default: the pixels as stored (wsolevaluation's frame), so a path,
                its bytes, its PIL image and its array give the same class and boxes.
            engine: "onnxruntime", or OpenVINO's CPU plugin ("openvino", "openvino-bf16": faster on
                CPUs with bf16 or VNNI; `pip install 'cream-rt[openvino]'`).
        Returns:
            A Localizer; use it in a `with` block or call `close()`.
        Raises:
            ModelFileError: missing, corrupt or foreign file, or a manifest from another version.
        """
        return cls(load_predictor(path, engine, providers, threads, spinning=False), threshold, all_contours,
                   exif_orientation)

    def close(self) -> None:
        """Stop the decoding threads; the Localizer cannot be called afterwards."""
        self._closed = True
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Localizer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def preprocess(self, images: Sequence) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Decode (in parallel; the first unreadable image raises) and preprocess; returns the
        batch and each original (width, height)."""
        decode = functools.partial(as_rgb_array, exif_orientation=self.exif_orientation)
        return self._batch(list(self._pool.map(decode, images)) if len(images) > 1 else [decode(images[0])])

    def _batch(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The model's batch of decoded RGB arrays, and each one's (width, height)."""
        m = self.manifest
        return preprocess_batch(arrays, m.input_size, m.mean, m.std, self._pool), [(a.shape[1], a.shape[0])
                                                                                   for a in arrays]

    def postprocess(self, logits: np.ndarray, maps: np.ndarray, class_ids: np.ndarray,
                    sizes: list[tuple[int, int]], return_maps: bool,
                    regressed: np.ndarray | None = None) -> list[Localization]:
        """Localizations from the model's outputs: boxes from the maps at the threshold, or the
        box regressor's box (`regressed`, fractions) when the export has one."""
        probs = softmax(logits)
        results = []
        for i, (width, height) in enumerate(sizes):
            c = int(class_ids[i]) if class_ids[i] >= 0 else int(logits[i].argmax())
            if regressed is not None:
                boxes = [[float(v) for v in fractions_to_box(regressed[i], width, height)]]
            else:
                boxes = scale_boxes(map_boxes(maps[i], self.threshold, self.all_contours, self.pas),
                                    self.manifest.input_size, width, height)
            results.append(Localization(c, self.manifest.class_names[c], float(probs[i, c]), boxes,
                                        (width, height), maps[i] if return_maps else None,
                                        "map" if regressed is None else "regressor"))
        return results

    def __call__(self, images: Sequence, class_ids: Sequence[int] | None = None, return_maps: bool = False,
                 on_error: OnError = "raise") -> list:
        """Localize a batch.

        Args:
            images: paths, encoded bytes, PIL images or uint8 RGB arrays of any size (or one of them).
            class_ids: one per image, the class whose map is used; -1 or None: the predicted one.
            return_maps: keep each score map (model resolution) in `Localization.map`.
            on_error: "raise": an image that cannot be decoded raises its error; "return": its place
                in the list holds that error (an `ImageReadError`) and the other images are localized.
        Returns:
            One `Localization` per image (or, with on_error "return", an image's error), in order,
            boxes in the original image's pixels.
        Raises:
            CreamError: an image that cannot be decoded (on_error "raise"), a class id that is not an
                integer in range, a closed Localizer.

        Example:
            >>> with Localizer.load("model.onnx") as loc:  # doctest: +SKIP
            ...     results = loc(["a.jpg", "broken.jpg"], on_error="return")
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)  # a (B, H, W, 3) batch
        elif isinstance(images, (str, os.PathLike, np.ndarray, bytes)) or hasattr(images, "convert"):
            images = [images]  # one image, not a sequence of rows
        if on_error not in get_args(OnError):
            raise CreamError(f"on_error must be one of {get_args(OnError)}, got {on_error!r}")
        if len(images) == 0:
            return []
        ids = class_id_array(class_ids, len(images), len(self.manifest.class_names))
        if self._closed:
            raise CreamError("this Localizer is closed")
        decode = functools.partial(decode_or_error, exif_orientation=self.exif_orientation)
        decoded = list(self._pool.map(decode, images)) if len(images) > 1 else [decode(images[0])]
        failed = next((d for d in decoded if isinstance(d, CreamError)), None)
        if failed is not None and on_error == "raise":
            raise failed
        return self.localize_decoded(decoded, ids, return_maps)

    def localize_decoded(self, decoded: Sequence[Decoded], class_ids: Sequence[int] | np.ndarray | None = None,
                         return_maps: bool = False) -> list[Localization | CreamError]:
        """Localizations of decoded RGB arrays in one model run; an error in `decoded` (as
        `decode_or_error` gives it) stays in its place."""
        ids = class_id_array(class_ids, len(decoded), len(self.manifest.class_names))
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        out: list[Localization | CreamError] = list(decoded)  # type: ignore[arg-type]
        if good:
            x, sizes = self._batch([d for d in decoded if isinstance(d, np.ndarray)])  # decoded: no second pass
            logits, maps, regressed = self.predictor.run(x, ids[good])
            for i, result in zip(good, self.postprocess(logits, maps, ids[good], sizes, return_maps, regressed)):
                out[i] = result
        return out

    def stream(self, images: Sequence, *, batch_size: int = 8, return_maps: bool = False,
               reduce_to: int | None = None) -> Iterator[tuple[object, Decoded, Localization | CreamError]]:
        """Localize `images` batch by batch while a background thread decodes the next batch;
        yields (input, decoded array or its error, result or error) per image, in order: an image
        that cannot be read never stops the stream. `reduce_to`: large JPEGs decoded at reduced scale.

        Example:
            >>> with Localizer.load("model.onnx") as loc:  # doctest: +SKIP
            ...     for path, _, result in loc.stream(paths, batch_size=16):
            ...         print(path, result)
        """
        for chunk, decoded in decode_ahead(images, batch_size, reduce_to=reduce_to,
                                           exif_orientation=self.exif_orientation):
            yield from zip(chunk, decoded, self.localize_decoded(decoded, return_maps=return_maps))


def result_record(image: object, result: Localization | CreamError | str) -> dict:
    """The JSON record of one image (`cream localize`'s line): its result, or its error."""
    if isinstance(result, Localization):
        return {"image": str(image), **result.to_dict()}
    return {"image": str(image), "error": str(result)}


def load(path: str | Path, **kwargs) -> Localizer:
    """Shorthand for `Localizer.load`."""
    return Localizer.load(path, **kwargs)
