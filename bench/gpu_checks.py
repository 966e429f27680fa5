"""GPU checks of the fused CUDA op, run by bench/gpu_check.sh on a lent GPU machine:
correctness against the float64 CPU reference on fresh random inputs (outputs poisoned first),
the device's measured copy bandwidth, and the op's achieved bandwidth (bytes it must read over
its time). Writes one JSON file. `python -m bench.gpu_checks OUT.json`"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch


def reference_z(features: np.ndarray, centroids: np.ndarray, iterations: int, beta: float,
                unit: bool = False) -> np.ndarray:
    """float64 EM straight from docs/method.md, one image at a time (z_fg); `unit`: the M-step
    averages the L2-normalised features."""
    eps = 1e-6
    out = []
    for f, mu0 in zip(features.astype(np.float64), centroids.astype(np.float64)):
        k = f.shape[0]
        x = f.reshape(k, -1).T
        xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        mu, pi = [mu0[0], mu0[1]], [0.5, 0.5]
        for t in range(iterations):
            logit = np.stack([beta * xn @ (m / (np.linalg.norm(m) + eps)) + np.log(max(p, eps))
                              for m, p in zip(mu, pi)])
            z = np.exp(logit - logit.max(0)) / np.exp(logit - logit.max(0)).sum(0)
            if t < iterations - 1:
                mu = [(z[j][:, None] * (xn if unit else x)).sum(0) / (z[j].sum() + eps) for j in range(2)]
                pi = [z[j].sum() / len(x) for j in range(2)]
        out.append(z[0].reshape(f.shape[1:]))
    return np.stack(out)


def reference_map(features: np.ndarray, cam: np.ndarray, centroids: np.ndarray, iterations: int, beta: float,
                  tau: float, unit: bool = False, calibration: str = "omega") -> np.ndarray:
    """float64 z~ + minmax(CAM) (docs/method.md 3.3-3.4) on top of `reference_z`, with the
    calibration rule `calibration` ("omega", "cam-mean", "none")."""
    eps = 1e-6
    out = []
    for z, c in zip(reference_z(features, centroids, iterations, beta, unit), cam.astype(np.float64)):
        span = c.max() - c.min()
        c_n = (c - c.min()) / span if span > 0 else np.zeros_like(c)
        omega = c_n >= tau
        if calibration == "cam-mean":
            keep = (z * c_n).sum() / (z.sum() + eps) >= ((1 - z) * c_n).sum() / ((1 - z).sum() + eps)
        else:
            keep = calibration == "none" or z[omega].sum() >= (1 - z[omega]).sum()
        out.append((z if keep else 1 - z) + c_n)
    return np.stack(out)


def timed(fn, repeats: int = 50) -> float:
    """Median milliseconds with CUDA events, after warm-up."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main(out_path: str) -> int:
    from cream_rt.model.fused import cosine_em, load_extension

    assert torch.cuda.is_available(), "no CUDA device"
    load_extension("cuda")
    result = {"gpu": torch.cuda.get_device_name(0), "torch": str(torch.__version__), "correctness": [], "bandwidth": []}
    rng = np.random.default_rng(12345)
    cases = [(1, 64, 7, 1), (3, 256, 14, 2), (2, 1024, 14, 3), (4, 2048, 28, 2), (1, 33, 5, 4)]
    runs = [(case, unit, calibration) for calibration in ("cam-mean", "omega", "none") for unit in (True, False)
            for case in cases]
    for (b, k, side, t), unit, calibration in runs:
        f = np.maximum(rng.normal(0, 1, (b, k, side, side)), 0).astype(np.float32)
        f[0, :, 0, :] = 0  # zero pixels
        mu = rng.random((b, 2, k)).astype(np.float32)
        cam = rng.normal(0, 1, (b, side, side)).astype(np.float32)
        z = cosine_em(torch.from_numpy(f).cuda(), torch.from_numpy(cam).cuda(), torch.from_numpy(mu).cuda(), t, 8.0,
                      0.2, unit, calibration).cpu().numpy()
        ref = reference_map(f, cam, mu, t, 8.0, 0.2, unit, calibration)
        rel = float(np.linalg.norm(z - ref) / np.linalg.norm(ref))
        result["correctness"].append({"shape": [b, k, side, side], "iterations": t, "unit_mean": unit,
                                      "calibration": calibration,
                                      "max_abs": float(np.abs(z - ref).max()), "rel_l2": rel,
                                      "finite": bool(np.isfinite(z).all())})
    # device copy bandwidth (bytes read + written)
    n = 1 << 28
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    src.uniform_()
    copy_ms = timed(lambda: dst.copy_(src), 20)
    copy_gbs = 2 * n * 4 / copy_ms / 1e6
    result["copy_bandwidth_GBps"] = copy_gbs
    for b, k, side in [(32, 2048, 28), (32, 1024, 14), (256, 2048, 28)]:
        x = torch.relu(torch.randn(b, k, side, side, device="cuda"))
        mu = torch.rand(b, 2, k, device="cuda")
        cam = torch.randn(b, side, side, device="cuda")
        ms = timed(lambda x=x, cam=cam, mu=mu: cosine_em(x, cam, mu, 2, 8.0, 0.2, True, "cam-mean"))
        bytes_min = 2 * x.numel() * 4  # T=2: the features are read twice (E+M sums, then E)
        gbs = bytes_min / ms / 1e6
        result["bandwidth"].append({"shape": [b, k, side, side], "ms": ms, "GBps": gbs,
                                   "fraction_of_copy": gbs / copy_gbs})
    with open(out_path, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))
    worst = max(c["max_abs"] for c in result["correctness"])
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_checks.json"))
