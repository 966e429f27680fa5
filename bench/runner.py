"""`cream bench`: latency per image and throughput of every engine side by side, with the
Localizer pipeline breakdown, the machine and versions, and ratios computed in one run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engines import EngineUnavailable, build_engine
from .latency import measure_interleaved
from .machine import machine_info, peak_rss_mb, reset_peak_rss
from .pipeline import pipeline_breakdown
from .report import ratios


@dataclass
class BenchConfig:
    engines: tuple[str, ...] = ("eager", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 8)
    modes: tuple[str, ...] = ("cam", "cream")
    iterations: tuple[int, ...] = (2,)
    budget_s: float = 2.0
    pipeline: bool = True
    device: str = "cpu"
    seed: int = 0


def untrained_model(backbone: str, classes: int = 200):
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


def run_bench(model, onnx_models: dict[tuple[str, int], str], config: BenchConfig, log=print,
              int8_models: dict[tuple[str, int], str] | None = None) -> dict:
    """Time each engine x batch size x (mode, T); `onnx_models` maps (mode, T) to an fp32 export,
    `int8_models` to its int8 version (for the onnxruntime-int8 engine)."""
    from cream_rt.preprocess import preprocess_batch

    cfg = model.config
    size = cfg.input_size
    rows: list[dict] = []
    skipped: dict[str, str] = {}  # engine -> why it could not run (reported if it never ran)
    variants = [("cam", 0)] if "cam" in config.modes else []
    variants += [("cream", t) for t in config.iterations if "cream" in config.modes]
    images = sample_images(max(config.batch_sizes), size, config.seed)
    for batch in config.batch_sizes:
        x = preprocess_batch(images[:batch], size, cfg.mean, cfg.std)
        ids = (np.arange(batch) % cfg.num_classes).astype(np.int64)
        engines = {}
        for engine_name in config.engines:
            for mode, t in variants:
                try:
                    exports = (int8_models or {}) if engine_name == "onnxruntime-int8" else onnx_models
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
            log(f"  {engine_name:<20}{mode:<6}T={t} b={batch:<3} {row['p50_ms_per_image']:8.3f} ms/img "
                f"(p90 {st['p90_ms'] / batch:.3f})  {row['images_per_s']:8.1f} img/s")
    pipeline = pipeline_breakdown(onnx_models, images, config.batch_sizes, config.budget_s) if config.pipeline else []
    ran = {r["engine"] for r in rows}
    skipped_list = [{"engine": e, "reason": why} for e, why in skipped.items() if e not in ran]
    return {"rows": rows, "skipped": skipped_list, "pipeline": pipeline, "ratios": ratios(rows, pipeline),
            "machine": machine_info(), "config": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in config.__dict__.items()}}


