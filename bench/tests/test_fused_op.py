"""The fused cosine-EM op vs the torch implementation of `reactivate` (CPU; CUDA when present),
on ResNet50-size (K=2048, 28x28) and VGG-size (K=1024, 14x14) features at batch 1 and 32, and
end-to-end CREAM vs CAM through the eager model with the fused op. Ratios from one run:
`.venv/bin/python -m pytest bench/tests/test_fused_op.py -s` (CREAM_BENCH_JSON=path records them)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from bench.targets import FUSED_OP_TARGET  # noqa: E402
from cream_rt.benchmark.latency import measure_interleaved, paired_ratio  # noqa: E402
from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.model.em import reactivate  # noqa: E402

RESULTS: dict = {"op": [], "end_to_end": []}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _save():
    target = os.environ.get("CREAM_BENCH_JSON")
    if target:
        info = {"platform": platform.platform(), "torch": str(torch.__version__), "threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        Path(target).write_text(json.dumps({"machine": info, "command": "pytest bench/tests/test_fused_op.py -s",
                                            **RESULTS}, indent=2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
@pytest.mark.parametrize("k,side", [(2048, 28), (1024, 14)])
@pytest.mark.parametrize("batch", [1, 32])
def test_fused_vs_torch_reactivate(device, k, side, batch, unit):
    gen = torch.Generator().manual_seed(0)
    features = torch.relu(torch.randn(batch, k, side, side, generator=gen)).to(device)
    cam = torch.randn(batch, side, side, generator=gen).to(device)
    centroids = torch.rand(batch, 2, k, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with torch.no_grad():
        ref = reactivate(features, cam, centroids, CreamConfig(feature_mean="unit" if unit else "raw",
                         calibration="omega"), iterations=2)
        got = reactivate(features, cam, centroids, CreamConfig(feature_mean="unit" if unit else "raw",
                         calibration="omega"), iterations=2, fused=True)
        assert (ref - got).abs().max().item() < 1e-5
        stats = measure_interleaved({"torch": lambda: reactivate(features, cam, centroids,
                                                                 CreamConfig(feature_mean="unit" if unit else "raw",
                                                                 calibration="omega"), iterations=2),
                                     "fused": lambda: reactivate(features, cam, centroids,
                                                                 CreamConfig(feature_mean="unit" if unit else "raw",
                                                                 calibration="omega"), iterations=2, fused=True)},
                                    budget_s=6, sync=sync)
        t_torch, t_fused = stats["torch"]["p50_ms"], stats["fused"]["p50_ms"]
    ratio = t_torch / t_fused
    RESULTS["op"].append({"device": device, "unit_mean": unit, "K": k, "side": side, "batch": batch,
                          "torch_ms": t_torch, "fused_ms": t_fused, "speedup": ratio})
    print(f"\n{device} {'unit' if unit else 'raw'} K={k} {side}x{side} batch {batch}: torch {t_torch:.2f} ms vs fused "
          f"{t_fused:.2f} ms: {ratio:.1f}x")
    _save()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone,batch", [("resnet50", 1), ("resnet50", 8), ("small-cnn", 8)])
def test_end_to_end_cream_vs_cam_with_fused_op(device, backbone, batch):
    from cream_rt.model.network import create_model

    torch.manual_seed(0)
    size = 96 if backbone == "small-cnn" else 224
    model = create_model(backbone, 200, input_size=size).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    def run(mode: str, fused: bool):
        def call():
            return model(x, None, mode, 2, fused)
        return call

    with torch.no_grad():
        stats = measure_interleaved({"cam": run("cam", False), "fused": run("cream", True),
                                     "torch": run("cream", False)}, budget_s=15, sync=sync)
    cam, cream, unfused = (stats[k]["p50_ms"] for k in ("cam", "fused", "torch"))
    fused_ratio, torch_ratio = paired_ratio(stats["fused"], stats["cam"]), paired_ratio(stats["torch"], stats["cam"])
    RESULTS["end_to_end"].append({"device": device, "backbone": backbone, "batch": batch,
                                  "feature_mean": model.config.cream.feature_mean, "cam_ms": cam,
                                  "cream_fused_ms": cream, "cream_torch_ms": unfused,
                                  "cream_fused_vs_cam": fused_ratio, "cream_torch_vs_cam": torch_ratio,
                                  "ratio": "median over 5 rotating rounds of the per-round median ratio"})
    print(f"\n{device} {backbone} batch {batch}: CREAM T=2 (fused) vs CAM {fused_ratio:.3f}x, "
          f"(torch EM) {torch_ratio:.3f}x")
    _save()
    print(FUSED_OP_TARGET.line(fused_ratio))
    assert FUSED_OP_TARGET.passes(fused_ratio)
