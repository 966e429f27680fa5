"""`cream bench`: latency per image and throughput of every engine side by side, with the
Localizer pipeline timed stage by stage (decode + resize, model, boxes) and streamed, the
machine and versions, the ratios measured in one run and a latency-per-image plot."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .engines import INT8_ENGINES, EngineUnavailable, build_engine
from .latency import measure_interleaved, paired_ratio
from .machine import machine_info, peak_rss_mb, reset_peak_rss

_log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported where a model is built

    from cream_rt.model.network import CamModel

@dataclass
class BenchConfig:
    """What `cream bench` measures: engines, batch sizes, modes, T and the time budget."""

    engines: tuple[str, ...] = ("eager", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 8)
    modes: tuple[str, ...] = ("cam", "cream")
    iterations: tuple[int, ...] = ()  # CREAM's T values; empty: the model's own
    budget_s: float = 2.0
    pipeline: bool = True
    device: str = "cpu"
    seed: int = 0

    def steps(self, model: CamModel) -> tuple[int, ...]:
        """The T values to time: the given ones, else the model's own."""
        return self.iterations or (model.config.cream.iterations or 0,)  # a built model has T


def untrained_model(backbone: str, classes: int = 200) -> CamModel:
    """The model the latency benchmarks time: `backbone` with seed-0 random weights, 224 px
    (small-cnn 96 px), in eval mode. Speed does not depend on training."""
    import torch

    from cream_rt.model.network import create_model

    torch.manual_seed(0)
    return create_model(backbone, classes).eval()


def sample_images(count: int, size: int, seed: int) -> list[np.ndarray]:
    """RGB uint8 images from the synthetic benchmark (any content would do for timing)."""
    import cv2

    from cream_rt.synth import SynthConfig, make_example

    rng = np.random.default_rng(seed)
    config = SynthConfig(size=size)
    return [cv2.cvtColor(make_example(i % 6, rng, config)[0], cv2.COLOR_BGR2RGB) for i in range(count)]


def int8_exports(onnx_models: dict[tuple[str, int], str], model_config, folder: str, seed: int = 0,
                 calibration_images: int = 32) -> dict[tuple[str, int], str]:
    """The fp32 exports with int8 convolutions, calibrated on synthetic benchmark images (enough
    for timing; `cream export --int8 --calibration-data` calibrates on real data)."""
    from cream_rt.export.quantize import calibration_batches, quantize_export

    images = sample_images(calibration_images, model_config.input_size, seed + 1)
    out = {}
    for (mode, t), path in onnx_models.items():
        out[(mode, t)] = str(Path(folder) / f"{mode}{t}-int8.onnx")
        quantize_export(path, out[(mode, t)], calibration_batches(images, model_config.input_size, model_config.mean,
                                                                  model_config.std))
    return out


def run_bench(model, onnx_models: dict[tuple[str, int], str], config: BenchConfig, *,
              int8_models: dict[tuple[str, int], str] | None = None) -> dict:
    """Time each engine x batch size x (mode, T); `onnx_models` maps (mode, T) to an fp32 export,
    `int8_models` to its int8 version (for the onnxruntime-int8 engine)."""
    from cream_rt.preprocess import preprocess_batch

    cfg = model.config
    size = cfg.input_size
    rows: list[dict] = []
    skipped: dict[str, str] = {}  # engine -> why it could not run (reported if it never ran)
    variants = [("cam", 0)] if "cam" in config.modes else []
    variants += [("cream", t) for t in config.steps(model) if "cream" in config.modes]
    images = sample_images(max(config.batch_sizes), size, config.seed)
    for batch in config.batch_sizes:
        x = preprocess_batch(images[:batch], size, cfg.mean, cfg.std)
        ids = (np.arange(batch) % cfg.num_classes).astype(np.int64)
        engines = {}
        for engine_name in config.engines:
            for mode, t in variants:
                try:
                    exports = (int8_models or {}) if engine_name in INT8_ENGINES else onnx_models
                    engines[(engine_name, mode, t)] = build_engine(engine_name, model, exports.get((mode, t)),
                                                                   mode, t, x, ids, config.device)
                except EngineUnavailable as exc:
                    skipped.setdefault(engine_name, str(exc))
        if not engines:
            continue
        # every engine and variant of this batch size is timed round-robin, so the ratios
        # between them are free of the machine's drift
        peaks = {}
        for key, engine in engines.items():  # process peak RSS while each engine runs (untimed)
            reset_peak_rss()
            engine.run()
            engine.run()
            peaks[key] = peak_rss_mb()
        sync = next((e.sync for e in engines.values() if e.sync), None)
        stats = measure_interleaved({k: e.run for k, e in engines.items()}, budget_s=config.budget_s * len(engines),
                                    sync=sync)
        for (engine_name, mode, t), engine in engines.items():
            st = stats[(engine_name, mode, t)]
            row = {"engine": engine_name, "mode": mode, "iterations": t, "batch": batch,
                   "third_party": engine.third_party, **st,
                   "p50_ms_per_image": st["p50_ms"] / batch, "images_per_s": 1e3 * batch / st["p50_ms"],
                   "peak_rss_mb": peaks[(engine_name, mode, t)]}
            rows.append(row)
            _log.info(f"  {engine_name:<20}{mode:<6}T={t} b={batch:<3} {row['p50_ms_per_image']:8.3f} ms/img "
                f"(p90 {st['p90_ms'] / batch:.3f})  {row['images_per_s']:8.1f} img/s")
    pipeline = pipeline_breakdown(onnx_models, images, config.batch_sizes, config.budget_s) if config.pipeline else []
    ran = {r["engine"] for r in rows}
    skipped_list = [{"engine": e, "reason": why} for e, why in skipped.items() if e not in ran]
    return {"rows": rows, "skipped": skipped_list, "pipeline": pipeline, "ratios": ratios(rows, pipeline),
            "machine": machine_info(), "config": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in config.__dict__.items()}}


def _streamed_ms_per_batch(localizer, batch_paths: list[str], budget_s: float, batches: int = 8) -> float:
    """Median time per batch when `batches` batches go through the path `cream localize` takes:
    decoding one batch ahead in a background thread while the model runs the current one."""
    from cream_rt.runtime import decode_ahead

    stream = batch_paths * batches
    per_batch: list[float] = []
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
            timings: dict[str, list[float]] = {"decode_preprocess": [], "model": [], "postprocess": []}
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


def ratios(rows: list[dict], pipeline: list[dict]) -> list[str]:
    """The headline comparisons, each from numbers measured in this run."""
    def row(engine, mode, batch, t=None):
        for r in rows:
            same_t = t is None or r["iterations"] == t
            if r["engine"] == engine and r["mode"] == mode and r["batch"] == batch and same_t:
                return r
        return None

    def find(engine, mode, batch, t=None):
        r = row(engine, mode, batch, t)
        return r["p50_ms"] if r else None

    lines = []
    batches = sorted({r["batch"] for r in rows})
    cream_ts = sorted({r["iterations"] for r in rows if r["mode"] == "cream"})
    t = max(cream_ts) if cream_ts else None
    for b in batches:
        for mode, tt in (("cream", t), ("cam", 0)):
            for ort_engine in ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8"):
                e, o = find("eager", mode, b, tt), find(ort_engine, mode, b, tt)
                if e and o:
                    lines.append(f"{ort_engine} vs eager, {mode}{'' if mode == 'cam' else f' T={tt}'}, batch {b}: "
                                 f"speed-up {e / o:.2f}x")
        for engine in ("eager", "eager-fused", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
                       "openvino-int8", "eager-channels-last", "torch-compile"):
            c, r = row(engine, "cam", b), row(engine, "cream", b, t)
            if c and r:
                lines.append(f"{engine} CREAM T={t} vs CAM, batch {b}: {paired_ratio(r, c):.3f}x the latency")
        o = find("onnxruntime", "cream", b, t)
        for engine in ("eager-fused",):
            e = find(engine, "cream", b, t)
            if e and o:
                lines.append(f"onnxruntime vs {engine}, cream T={t}, batch {b}: speed-up {e / o:.2f}x")
        ours = [v for v in (find("eager", "cam", b), find("onnxruntime", "cam", b)) if v]
        for other in ("grad-cam", "torchcam"):
            o = find(other, "cam", b)
            if o and ours:
                lines.append(f"our CAM (fastest of eager/onnxruntime) vs {other}, batch {b}: "
                             f"speed-up {o / min(ours):.2f}x")
    for p in pipeline:
        lines.append(f"Localizer pipeline vs bare model, batch {p['batch']}: {p['pipeline_vs_model']:.2f}x the time "
                     f"(one batch); {p['streamed_vs_model']:.2f}x streamed (decoding the next batch meanwhile)")
    return lines


def plot(result: dict, path: str) -> None:
    """Latency per image against batch size, one line per engine and mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from cream_rt.errors import CreamError

        raise CreamError("--plot needs matplotlib (pip install -r requirements-bench.txt)") from None
    from cream_rt.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = {}
    for r in result["rows"]:
        label = f"{r['engine']} {r['mode']}" + (f" T={r['iterations']}" if r["mode"] == "cream" else "")
        series.setdefault(label, []).append((r["batch"], r["p50_ms_per_image"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                linestyle="--" if "cam" in label.split()[1] else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency per image (ms)")
    ax.set_title(f"cream bench: {result.get('backbone', '')} on {result['machine'].get('cpu', 'this machine')}"[:80])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
