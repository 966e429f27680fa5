"""The torch-free runtime: exported models under ONNX Runtime, batched localization with
boxes in original image coordinates. Imports numpy, OpenCV and onnxruntime only."""
from __future__ import annotations

import functools
import logging
import numbers
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from .boxes import PAS_THETA, boxes_at_threshold, fractions_to_box, quantize, reference_level
from .errors import CreamError, ImageReadError, ModelFileError
from .manifest import MANIFEST_KEY, Manifest
from .preprocess import as_rgb_array, decode_image_bytes, preprocess_batch

__all__ = ["DEFAULT_PROVIDERS", "make_session", "read_manifest", "class_id_array", "OnnxPredictor", "Localization",
           "softmax", "map_boxes", "scale_boxes", "decode_ahead", "decode_or_error", "box_threshold",
           "announce_fallback", "Localizer", "result_record", "load"]

OnError = Literal["raise", "return"]  # what Localizer does with an image it cannot decode
Decoded = np.ndarray | CreamError  # an RGB image, or why it could not be decoded
DEFAULT_THRESHOLD = 0.2  # box threshold of a model with no tuned or network threshold (CAM's usual value)
_log = logging.getLogger(__name__)
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)  # see make_session


def make_session(path: str, providers: Sequence[str] | None = None, threads: int | None = None,
                 spinning: bool = True, data: bytes | None = None):
    """An ONNX Runtime session tuned for throughput: all graph optimisations, one intra-op
    thread per core, the best available providers (TensorRT, CUDA, CPU) unless given. Without
    `spinning`, idle intra-op threads sleep instead of spinning between runs, leaving the cores
    to the caller's own work (decoding, boxes) at the cost of a slower wake-up. With `data`, the
    model is those bytes (a Ray actor's copy) and `path` only names it in errors. ONNX Runtime's
    QDQ propagation is off: on an int8 export it copies the feature map's DequantizeLinear
    through the reshapes of the head, 1.82x -> 2.02x fp32 at batch 8 (docs/performance.md);
    an fp32 graph has nothing it acts on."""
    import onnxruntime as ort

    if data is None and not os.path.isfile(path):
        raise ModelFileError(f"{path}: model file not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = set(ort.get_available_providers())
    chosen = [p for p in (providers or DEFAULT_PROVIDERS) if p in available]
    if not chosen:
        raise CreamError(f"none of the providers {list(providers or [])} is available; have {sorted(available)}")
    try:
        return ort.InferenceSession(path if data is None else data, options, providers=chosen,
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:  # corrupt protobuf, unknown op, truncated file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        if Path(path).suffix.lower() in (".pt", ".pth", ".tar", ".ckpt"):
            first = f"a torch checkpoint? export it first: cream export --checkpoint {path} --out m.onnx"
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None


def read_manifest(session, path: str) -> Manifest:
    """The export's manifest, checked against the graph's own outputs."""
    props = session.get_modelmeta().custom_metadata_map
    if MANIFEST_KEY not in props:
        raise ModelFileError(f"{path}: no cream_rt manifest in the model (not exported by `cream export`)")
    manifest = Manifest.from_json(props[MANIFEST_KEY], path)
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if list(outputs) != manifest.outputs:
        raise ModelFileError(f"{path}: the graph's outputs {list(outputs)} are not the manifest's {manifest.outputs}")
    classes = outputs.get("logits", [None, None])[-1]
    if isinstance(classes, int) and classes != len(manifest.class_names):
        raise ModelFileError(f"{path}: the manifest names {len(manifest.class_names)} classes but the graph "
                             f"outputs {classes}")
    return manifest


def class_id_array(class_ids, count: int, num_classes: int) -> np.ndarray:
    """`count` class ids as int64, each -1 (the predicted class) or in 0..num_classes-1;
    CreamError for floats, out-of-range values and the wrong length."""
    if class_ids is None:
        return np.full(count, -1, np.int64)
    values = list(class_ids.tolist() if isinstance(class_ids, np.ndarray) else class_ids)
    if len(values) != count:
        raise CreamError(f"class_ids: expected {count} ids (one per image), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CreamError(f"class id {value!r} is not an integer")
        if not -1 <= value < num_classes:
            raise CreamError(f"class id {value} is out of range: expected -1 (predicted) or 0..{num_classes - 1}")
    return np.asarray(values, np.int64).reshape(count)


class OnnxPredictor:
    """`predictor(x, class_ids) -> (logits, maps)` over an exported model, numpy in and out."""

    def __init__(self, session, manifest: Manifest, path: str):
        self.session, self.manifest, self.path = session, manifest, path
        self.input_size, self.mean, self.std = manifest.input_size, manifest.mean, manifest.std
        names = [i.name for i in session.get_inputs()]
        if names != ["images", "class_ids"]:
            raise ModelFileError(f"{path}: expected inputs ['images', 'class_ids'], got {names}")

    @classmethod
    def load(cls, path: str | os.PathLike, providers: Sequence[str] | None = None,
             threads: int | None = None, allow_custom_ops: bool = False, spinning: bool = True) -> "OnnxPredictor":
        """Open an export. A `--fused` export (cream::CosineEM node) runs only with
        `allow_custom_ops` (parity tests: onnxruntime-extensions + torch) or in TensorRT."""
        path = os.fspath(path)
        try:
            session = make_session(path, providers, threads, spinning)
        except ModelFileError as exc:
            if "CosineEM" not in str(exc):
                raise
            if not allow_custom_ops:
                raise ModelFileError(f"{path}: uses the custom op cream::CosineEM (exported with --fused); "
                                     "ONNX Runtime runs the standard-op export: re-export without --fused, "
                                     "or build a TensorRT engine with `cream export --trt`") from None
            from .export.ort_custom import custom_op_session

            session = custom_op_session(path, threads)
        return cls(session, read_manifest(session, path), path)

    def __call__(self, x: np.ndarray, class_ids=None):
        """(logits `(B,C)`, maps `(B,S,S)`) of a normalised batch `x` `(B,3,S,S)`."""
        return self.run(x, class_ids)[:2]

    def run(self, x: np.ndarray, class_ids=None):
        """(logits, maps, boxes): boxes `(B,4)` fractions from the box regressor, or None."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise CreamError(f"images must have shape (B, 3, {self.input_size}, {self.input_size}), got {x.shape}")
        ids = class_id_array(class_ids, len(x), len(self.manifest.class_names))
        outputs = self.session.run(None, {"images": x, "class_ids": ids})
        return outputs[0], outputs[1], (outputs[3] if self.manifest.regressor else None)

    def describe(self) -> dict:
        m = self.manifest
        return {"engine": "onnxruntime", "providers": self.session.get_providers(), "mode": m.mode,
                "iterations": m.iterations, "backbone": m.backbone}


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
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def map_boxes(scoremap: np.ndarray, threshold: float, all_contours: bool, pas: bool = False) -> np.ndarray:
    """Boxes of a [0,1] map at `threshold` of its max (of its 90th percentile with `pas`), with
    the protocol's semantics."""
    img = quantize(scoremap)
    return boxes_at_threshold(img, int(threshold * reference_level(img, pas)), all_contours)


def scale_boxes(boxes: np.ndarray, map_size: int, width: int, height: int) -> list[list[float]]:
    """Map-resolution boxes to the original image's pixel coordinates."""
    sx, sy = width / map_size, height / map_size
    out = []
    for x0, y0, x1, y1 in boxes.tolist():
        out.append([round(x0 * sx, 2), round(y0 * sy, 2), round(min((x1 + 1) * sx - 1, width - 1), 2),
                    round(min((y1 + 1) * sy - 1, height - 1), 2)])
    return out


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
    loc:`) or call `close()`."""

    def __init__(self, predictor: OnnxPredictor, threshold: float | None = None, all_contours: bool = False,
                 exif_orientation: bool = False):
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
             all_contours: bool = False, threads: int | None = None, exif_orientation: bool = False) -> "Localizer":
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
        Returns:
            A Localizer; use it in a `with` block or call `close()`.
        Raises:
            ModelFileError: missing, corrupt or foreign file, or a manifest from another version.
        """
        return cls(OnnxPredictor.load(path, providers, threads, spinning=False), threshold, all_contours,
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
        arrays = list(self._pool.map(decode, images)) if len(images) > 1 else [decode(images[0])]
        sizes = [(a.shape[1], a.shape[0]) for a in arrays]
        m = self.manifest
        return preprocess_batch(arrays, m.input_size, m.mean, m.std, self._pool), sizes

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

    def localize_decoded(self, decoded: Sequence[np.ndarray | CreamError], class_ids: Sequence[int] | None = None,
                         return_maps: bool = False) -> list[Localization | CreamError]:
        """Localizations of decoded RGB arrays in one model run; an error in `decoded` (as
        `decode_or_error` gives it) stays in its place."""
        ids = class_id_array(class_ids, len(decoded), len(self.manifest.class_names))
        good = [i for i, d in enumerate(decoded) if not isinstance(d, CreamError)]
        out: list[Localization | CreamError] = list(decoded)  # type: ignore[arg-type]
        if good:
            x, sizes = self.preprocess([decoded[i] for i in good])
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
