"""Latency measurement shared by `cream bench`, `cream demo` and the pytest-benchmark suites:
warm-up, then repeated timed calls until a time budget or a repeat cap; percentiles."""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)  # what names a variant


def measure(fn: Callable[[], object], warmup: int = 3, min_repeats: int = 10, max_repeats: int = 200,
            budget_s: float = 2.0, sync: Callable[[], None] | None = None) -> dict:
    """Time `fn()`: `warmup` untimed calls, then at least `min_repeats` timed calls and more
    until `budget_s` is spent (at most `max_repeats`). `sync` (e.g. torch.cuda.synchronize)
    runs before each clock read. Returns p50/p90/p99/mean in milliseconds and the count."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "repeats": len(t)}


def measure_interleaved(fns: Mapping[K, Callable[[], object]], rounds: int = 5, min_per_block: int = 3,
                        budget_s: float = 6.0, sync: Callable[[], None] | None = None) -> dict[K, dict]:
    """Time several variants in rotating blocks (A-block, B-block, ..., repeated `rounds` times)
    so that slow drift of the machine hits all of them alike and their ratios can be trusted,
    while each timed call runs with its own engine warm. The first two calls of a block are not
    timed: thread pools of the previous engine (ONNX Runtime's and OpenMP's spin after a run)
    would otherwise steal the cores. Same statistics as `measure`, per variant, plus the median
    of each round (`round_p50_ms`) for `paired_ratio`."""
    times: dict[K, list[float]] = {name: [] for name in fns}
    rounds_p50: dict[K, list[float]] = {name: [] for name in fns}
    block_s = budget_s / max(1, rounds * len(fns))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(2):
                fn()
            started = time.perf_counter()
            count = 0
            while count < min_per_block or time.perf_counter() - started < block_s:
                if sync:
                    sync()
                t0 = time.perf_counter()
                fn()
                if sync:
                    sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
                count += 1
            rounds_p50[name].append(float(np.median(times[name][-count:])))
    out: dict[K, dict] = {}
    for key, values in times.items():
        t = np.array(values)
        out[key] = {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
                     "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "repeats": len(t),
                     "round_p50_ms": rounds_p50[key]}
    return out


def paired_ratio(a: dict, b: dict) -> float:
    """Latency of `a` over `b` (two `measure_interleaved` results of one run): the median over
    rounds of the ratio of their medians in that round, so that drift between rounds cancels.
    Falls back to the ratio of overall medians where rounds are missing."""
    ra, rb = a.get("round_p50_ms") or [], b.get("round_p50_ms") or []
    if ra and len(ra) == len(rb):
        return float(np.median(np.array(ra) / np.array(rb)))
    return a["p50_ms"] / b["p50_ms"]
