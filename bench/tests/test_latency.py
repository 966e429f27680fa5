"""Latency benchmarks (pytest-benchmark), sharing `cream bench`'s engines and runner. Prints the
ratios of issue 6 measured in one run. Run on an idle machine:
`.venv/bin/python -m pytest bench/tests/test_latency.py -s --benchmark-enable`
(CREAM_BENCH_DIR=bench/results records one JSON per backbone)."""
from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from bench.targets import latency_checks  # noqa: E402
from cream_rt.atomic import write_json  # noqa: E402
from cream_rt.benchmark.engines import build_engine  # noqa: E402
from cream_rt.benchmark.runner import BenchConfig, int8_exports, run_bench, untrained_model  # noqa: E402
from cream_rt.export.onnx_export import export_model  # noqa: E402

THIRD_PARTY = ("grad-cam", "torchcam")


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet-lite0", "small-cnn"])
def test_engines_side_by_side(backbone):
    model = untrained_model(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_models = {}
        for mode, t in (("cam", 0), ("cream", 2)):
            onnx_models[(mode, t)] = str(Path(tmp) / f"{mode}.onnx")
            export_model(model, onnx_models[(mode, t)], mode, t)
        config = BenchConfig(engines=("eager", "eager-fused", "onnxruntime", "onnxruntime-int8") + THIRD_PARTY,
                             batch_sizes=(1, 8), iterations=(2,),
                             budget_s=float(os.environ.get("CREAM_BENCH_BUDGET", "3")))
        result = run_bench(model, onnx_models, config, int8_models=int8_exports(onnx_models, model.config, tmp))
    result["backbone"] = backbone
    result["command"] = "CREAM_BENCH_DIR=bench/results python -m pytest bench/tests/test_latency.py -s -k side_by_side"
    result["date"] = datetime.date.today().isoformat()
    print(f"\n{backbone}:")
    for line in result["ratios"]:
        print("  " + line)
    for skip in result["skipped"]:
        print(f"  skipped {skip['engine']}: {skip['reason']}")
    checks = latency_checks(result["rows"], result["pipeline"])
    result["targets"] = [target.line(measured) for target, measured in checks]
    for line in result["targets"]:
        print("  " + line)
    folder = os.environ.get("CREAM_BENCH_DIR")
    if folder:
        write_json(Path(folder) / f"latency_{backbone}.json", result)
    missed = [target.line(measured) for target, measured in checks if not target.passes(measured)]
    assert not missed, missed


def test_onnxruntime_cream_batch8(benchmark):
    """pytest-benchmark's own statistics for the deployment path (small-cnn, CREAM T=2, batch 8)."""
    model = untrained_model("small-cnn", 6)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.onnx")
        export_model(model, path, "cream", 2)
        x = np.random.default_rng(0).normal(0, 1, (8, 3, 96, 96)).astype(np.float32)
        engine = build_engine("onnxruntime", model, path, "cream", 2, x, np.arange(8) % 6)
        benchmark(engine.run)
