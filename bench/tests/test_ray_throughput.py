"""Ray Data localization vs the single-process `cream localize` loop, images/s on the same
2,400 photo-sized JPEGs and model in one run, with 1 and 2 actors (bench/ray_throughput.py).
Run: `.venv/bin/python -m pytest bench/tests/test_ray_throughput.py -s --benchmark-enable`
(set CREAM_BENCH_JSON=path to record the numbers)."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("ray.data", reason="Ray Data (the `ray` extra) not installed")


def test_ray_pipeline_keeps_up_with_one_process(tmp_path):
    from bench.ray_throughput import main
    from bench.targets import RAY_TARGET

    argv = ["--images", "2400", "--batch-size", "32", "--repeats", "1", "--work", str(tmp_path)]
    if os.environ.get("CREAM_BENCH_JSON"):
        argv += ["--out", os.environ["CREAM_BENCH_JSON"]]
    result = main(argv)
    assert RAY_TARGET.passes(result["ray_vs_single"]), RAY_TARGET.line(result["ray_vs_single"])
