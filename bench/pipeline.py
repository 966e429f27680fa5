"""The Localizer's pipeline timed stage by stage (decode + resize, model, boxes) and end to end
with decoding overlapped, against the model alone."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _streamed_ms_per_batch(localizer, batch_paths: list[str], budget_s: float, batches: int = 8) -> float:
    """Median time per batch when `batches` batches go through the path `cream localize` takes:
    decoding one batch ahead in a background thread while the model runs the current one."""
    from cream_rt.runtime import decode_ahead

    stream = batch_paths * batches
    per_batch = []
    started = time.perf_counter()
    while time.perf_counter() - started < budget_s or len(per_batch) < 3:
        t0 = time.perf_counter()
        for _, decoded in decode_ahead(stream, len(batch_paths)):
            localizer(decoded)
        per_batch.append((time.perf_counter() - t0) * 1e3 / batches)
    return float(np.median(per_batch))


def pipeline_breakdown(onnx_models: dict, images: list[np.ndarray], batch_sizes: tuple[int, ...],
                       budget_s: float) -> list[dict]:
    """The whole Localizer (decode + preprocess + model + boxes) against the bare model, per
    batch size, for the CREAM export with the largest T (or CAM): where the time goes."""
    import cv2

    from cream_rt.runtime import Localizer

    key = max(onnx_models, key=lambda k: (k[0] == "cream", k[1]))
    localizer = Localizer.load(onnx_models[key])
    encoded = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1] for im in images]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(encoded):
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(data.tobytes())
            paths.append(str(path))
        for batch in batch_sizes:
            batch_paths = paths[:batch]
            timings = {"decode_preprocess": [], "model": [], "postprocess": []}
            x, sizes = localizer.preprocess(batch_paths)
            ids = np.full(batch, -1, np.int64)
            for _ in range(3):  # warm-up
                localizer(batch_paths)
            started = time.perf_counter()
            while time.perf_counter() - started < budget_s or len(timings["model"]) < 10:
                t0 = time.perf_counter()
                x, sizes = localizer.preprocess(batch_paths)
                t1 = time.perf_counter()
                logits, maps = localizer.predictor(x, ids)
                t2 = time.perf_counter()
                localizer.postprocess(logits, maps, ids, sizes, False)
                t3 = time.perf_counter()
                for k, v in zip(timings, (t1 - t0, t2 - t1, t3 - t2)):
                    timings[k].append(v * 1e3)
            med = {k: float(np.median(v)) for k, v in timings.items()}
            total = sum(med.values())
            streamed = _streamed_ms_per_batch(localizer, batch_paths, budget_s)
            out.append({"batch": batch, "mode": key[0], "iterations": key[1], **{f"{k}_ms": v for k, v in med.items()},
                        "pipeline_ms": total, "bare_model_ms": med["model"],
                        "pipeline_vs_model": total / med["model"], "pipeline_ms_per_image": total / batch,
                        "streamed_ms": streamed, "streamed_vs_model": streamed / med["model"]})
    return out
