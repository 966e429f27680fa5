"""Batch localization on Ray Data: list the inputs, read their bytes and decode/preprocess them
in `map_batches` tasks, run the exported model in a pool of actors (one ONNX Runtime session
each, loaded once from bytes shipped by the driver), and write the single-process records as
shards (`cream_rt.shards`). Ray is imported only here, and only when called."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import CreamError, ModelFileError
from .shards import ShardFolder

__all__ = ["import_ray", "check_address", "ray_session", "read_batch", "decode_batch", "LocalizeActor",
           "cpu_shares", "localize_ray"]

_log = logging.getLogger(__name__)

RAY_MISSING = "--ray needs Ray Data: pip install 'cream-rt[ray]'"


def import_ray() -> ModuleType:
    """`ray` with Ray Data, or CreamError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CreamError(RAY_MISSING) from None
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) address must accept a TCP connection; Ray's own
    connection attempt would retry for a minute before failing with a long trace."""
    if not address or address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise CreamError(f"--ray-address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or "
                         "ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise CreamError(f"--ray-address {address}: no Ray cluster answers there ({reason.lower()}); start one "
                         "with `ray start --head` or leave out --ray-address for a local Ray") from None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray connected to `address` (a running cluster) or a local Ray on this machine's cores;
    shut down on exit if started here. An already initialised Ray is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token on this side too)"
        raise CreamError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {first}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: each path's bytes, or the reason it cannot be read (`error`)."""
    from .preprocess import read_image_bytes

    data, errors = [], []
    for path in batch["path"]:
        try:
            data.append(read_image_bytes(str(path)).tobytes())
            errors.append("")
        except CreamError as exc:
            data.append(b"")
            errors.append(str(exc))
    return {"path": batch["path"], "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def decode_batch(batch: dict[str, np.ndarray], input_size: int, exif_orientation: bool = False) \
        -> dict[str, np.ndarray]:
    """Ray Data stage: decode and resize to the model's input as the single-process path does
    (same functions, same error lines); uint8 pixels travel to the actors, a quarter of the
    normalised float32 tensor. A failed image keeps zero pixels and its error."""
    from .preprocess import resize_for_model
    from .runtime import decode_or_error

    count = len(batch["path"])
    pixels = np.zeros((count, input_size, input_size, 3), np.uint8)
    sizes = np.zeros((count, 2), np.int64)
    errors = list(batch["error"])
    for i, (path, data) in enumerate(zip(batch["path"], batch["data"])):
        if errors[i]:
            continue
        decoded = decode_or_error(str(path), data, exif_orientation=exif_orientation)
        if isinstance(decoded, Exception):
            errors[i] = str(decoded)
            continue
        sizes[i] = decoded.shape[1], decoded.shape[0]
        pixels[i] = resize_for_model(decoded, input_size)
    return {"path": batch["path"], "pixels": pixels, "size": sizes, "error": np.array(errors, dtype=object)}


class LocalizeActor:
    """Ray Data actor: one ONNX Runtime session, created once from the model's bytes, turning
    preprocessed batches into the JSON records `cream localize` writes."""

    def __init__(self, model_ref: list, model_name: str, threshold: float | None, all_contours: bool,
                 threads: int = 1):
        import ray

        from .preprocess import normalize
        from .runtime import Localizer, OnnxPredictor, make_session, read_manifest, result_record

        self._normalize, self._record = normalize, result_record
        # the bytes travel as an object reference inside a list: fetched here once, not inlined
        # into every actor's constructor arguments
        session = make_session(model_name, None, threads, spinning=False, data=ray.get(model_ref[0]))
        predictor = OnnxPredictor(session, read_manifest(session, model_name), model_name)
        self.localizer = Localizer(predictor, threshold, all_contours)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = [i for i, error in enumerate(batch["error"]) if not error]
        results = list(batch["error"])  # each image's result or its error, as Localizer.localize_decoded gives
        if good:
            ids = np.full(len(good), -1, np.int64)
            m = self.localizer.manifest
            x = self._normalize(batch["pixels"][good], m.mean, m.std)
            logits, maps, regressed = self.localizer.predictor.run(x, ids)
            sizes = [(int(w), int(h)) for w, h in batch["size"][good]]
            for i, result in zip(good, self.localizer.postprocess(logits, maps, ids, sizes, False, regressed)):
                results[i] = result
        records = [json.dumps(self._record(path, result)) for path, result in zip(batch["path"], results)]
        return {"record": np.array(records, dtype=object)}


def _model_bytes(model: str) -> tuple[bytes, str]:
    """The model file's bytes (shipped to every actor, so workers need no shared copy) and SHA-256."""
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"{model}: model file not found")
    if path.with_name(path.name + ".data").exists():
        raise ModelFileError(f"{model}: has external weights ({path.name}.data); --ray ships the model as one "
                             "file: re-export without --external-data")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def localize_ray(paths: Sequence[str | os.PathLike], model: str, out: str | os.PathLike, *,
                 address: str | None = None, actors: int = 2, batch_size: int = 8, threads: int = 1,
                 threshold: float | None = None, all_contours: bool = False, shard_format: str = "jsonl",
                 num_cpus: int | None = None, show_progress: bool = False, exif_orientation: bool = False) -> dict:
    """Localize `paths` with the exported `model` on Ray Data into the shard folder `out`.

    Args:
        paths: image files (a missing or corrupt one becomes a row with its error).
        model: an ONNX file made by `cream export` (one file, no external data).
        out: the shard folder; inputs already in its shards are skipped (resume).
        address: a running Ray cluster (`ray start --head`), or None for a local Ray.
        actors: ONNX Runtime actors (one session each); threads: intra-op threads per actor.
        batch_size: images per batch through every stage and per shard.
        threshold, all_contours, exif_orientation: box extraction and image frame, as for `Localizer`.
        shard_format: "jsonl" or "parquet".
        num_cpus: CPUs of a local Ray (default: all cores).
    Returns:
        The run's summary: inputs, skipped (already done), written rows, errors, seconds, images/s.
    Raises:
        CreamError: Ray missing or unreachable, a model without a manifest, a folder not ours.
    """
    from .runtime import announce_fallback, box_threshold, make_session, read_manifest

    import_ray()
    check_address(address)  # before anything is written
    data, sha = _model_bytes(model)
    manifest = read_manifest(make_session(str(model), ["CPUExecutionProvider"], 1, data=data), str(model))
    value, source = box_threshold(manifest, threshold)
    if source == "fallback":  # said here once, not by every actor
        announce_fallback(str(model), value)
    with ShardFolder(out, shard_format, sha, str(model)) as folder:
        options = RayOptions(address, actors, batch_size, threads, threshold, all_contours, num_cpus, show_progress,
                             exif_orientation)
        return _localize_into(folder, paths, data, str(model), manifest, options)


@dataclass(frozen=True)
class RayOptions:
    """How `localize_ray` runs (its keyword arguments)."""

    address: str | None
    actors: int
    batch_size: int
    threads: int
    threshold: float | None
    all_contours: bool
    num_cpus: int | None
    show_progress: bool
    exif_orientation: bool


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str], level: int = logging.ERROR) -> Iterator[None]:
    """Ray's INFO/WARNING lines would bury ours: raised to `level` while the block runs, then restored."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


def _localize_into(folder: ShardFolder, paths: Sequence, data: bytes, model: str, manifest, o: RayOptions) -> dict:
    """Skip what the folder holds, run the pipeline on the rest, record the run."""
    done = folder.done()
    todo = []
    for path in map(str, paths):
        if done[path] > 0:  # a path listed twice is done twice
            done[path] -= 1
        else:
            todo.append(path)
    skipped = len(paths) - len(todo)
    with ray_session(o.address, o.num_cpus) as ray, _quiet_loggers(("ray", "ray.data")):
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        folder.start_run({"address": o.address or "local", "actors": o.actors, "batch_size": o.batch_size,
                          "threads": o.threads, "inputs": len(paths), "skipped": skipped})
        written = errors = 0
        started = time.perf_counter()
        complete = False
        try:
            if todo:
                written, errors = _run_pipeline(ray, todo, data, model, manifest, folder, o)
            complete = True
        finally:
            seconds = time.perf_counter() - started
            folder.finish({"complete": complete, "written": written, "errors": errors, "seconds": round(seconds, 3)})
    return {"out": os.fspath(folder.folder), "inputs": len(paths), "skipped": skipped, "written": written,
            "errors": errors,
            "seconds": round(seconds, 3), "images_per_s": round(written / seconds, 2) if written and seconds else 0.0,
            "shards": len(folder.manifest["shards"]), "complete": complete}


def cpu_shares(cluster_cpus: float, actors: int) -> tuple[float, float]:
    """(CPUs per read/decode task, CPUs per actor) as Ray accounts them: the actors together hold
    three quarters of the cluster, so that tasks always find room (docs/distributed.md)."""
    task = min(0.25, cluster_cpus / 4)
    return task, min(1.0, 0.75 * cluster_cpus / actors)


def _run_pipeline(ray, todo: list[str], model_bytes: bytes, model_name: str, manifest, folder: ShardFolder,
                  o: RayOptions) -> tuple[int, int]:
    """Build and drain the Ray Data pipeline; each finished batch becomes one shard; each image's
    error is logged."""
    from tqdm import tqdm

    actors, batch_size = o.actors, o.batch_size
    blocks = max(1, min(len(todo) // batch_size, 10_000))
    task_cpus, actor_cpus = cpu_shares(float(ray.cluster_resources().get("CPU", 1.0)), actors)
    dataset = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    dataset = dataset.map_batches(read_batch, batch_size=batch_size, num_cpus=task_cpus)
    dataset = dataset.map_batches(decode_batch, batch_size=batch_size, num_cpus=task_cpus,
                                  fn_kwargs={"input_size": manifest.input_size,
                                             "exif_orientation": o.exif_orientation})
    with warnings.catch_warnings():  # max_restarts still goes through the deprecated **ray_remote_args in 2.60
        warnings.simplefilter("ignore")
        # not restarted: a crashed actor fails the run, and a re-run redoes only its batches
        dataset = dataset.map_batches(LocalizeActor, batch_size=batch_size, num_cpus=actor_cpus, max_restarts=0,
                                      compute=ray.data.ActorPoolStrategy(size=actors),
                                      fn_constructor_kwargs={"model_ref": [ray.put(model_bytes)],
                                                             "model_name": model_name, "threshold": o.threshold,
                                                             "all_contours": o.all_contours, "threads": o.threads})
    written = errors = 0
    with tqdm(total=len(todo), desc="localize (ray)", unit="img", disable=not o.show_progress, file=sys.stderr) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            records = [json.loads(r) for r in batch["record"]]
            for record in records:
                if "error" in record:
                    _log.error("%s", record["error"])
            folder.write(records)
            written += len(records)
            errors += sum("error" in r for r in records)
            bar.update(len(records))
    return written, errors

