"""int8 vs fp32 ONNX Runtime on the same CREAM export, per backbone at batch 8, timed
interleaved in one run, against what this CPU allows: the int8 / fp32 ratio of a large GEMM in
ONNX Runtime's own kernels (MatMulInteger u8 x s8 vs MatMul fp32) bounds the model's gain.

    python -m bench.studies.int8_speed --backbones efficientnet-lite0,resnet50 \\
        --out bench/results/studies/int8_speed.json

Models: seed-0 random weights at 224 px (Lite0 with its ImageNet weights when they are
installed); the int8 export is calibrated on synthetic benchmark images (speed does not depend
on the ranges)."""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import command_line, machine_info

GEMM_SIZE = 1536


def gemm_peaks(size: int = GEMM_SIZE, budget_s: float = 3.0) -> dict[str, float]:
    """G(FL)OP/s of a square GEMM in ONNX Runtime: fp32 MatMul and int8 MatMulInteger (uint8
    activations x int8 weights, the pair the quantized convolutions use), measured interleaved."""
    import onnx
    import onnx.helper as oh

    from cream_rt.benchmark.latency import measure_interleaved
    from cream_rt.runtime import make_session

    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((size, size)).astype(np.float32)
    a8 = rng.integers(0, 255, (size, size), dtype=np.uint8)
    w8 = oh.make_tensor("w", onnx.TensorProto.INT8, [size, size], rng.integers(-127, 127, size * size).tolist())
    w32 = oh.make_tensor("w", onnx.TensorProto.FLOAT, [size, size], a32.reshape(-1).tolist())
    graphs = {
        "fp32": (oh.make_graph([oh.make_node("MatMul", ["a", "w"], ["c"])], "fp32",
                              [oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
                              [oh.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])], [w32]), a32),
        "int8": (oh.make_graph([oh.make_node("MatMulInteger", ["a", "w"], ["c"])], "int8",
                              [oh.make_tensor_value_info("a", onnx.TensorProto.UINT8, [size, size])],
                              [oh.make_tensor_value_info("c", onnx.TensorProto.INT32, [size, size])], [w8]), a8),
    }
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (graph, x) in graphs.items():
            path = str(Path(tmp) / f"{name}.onnx")
            onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)]), path)
            session = make_session(path, ["CPUExecutionProvider"])
            runs[name] = (lambda s, v: lambda: s.run(None, {"a": v}))(session, x)
        stats = measure_interleaved(runs, budget_s=budget_s * len(runs))
    ops = 2.0 * size ** 3
    return {name: ops / (s["p50_ms"] / 1e3) / 1e9 for name, s in stats.items()}


def model_pair(backbone: str, folder: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """fp32 and int8 CREAM T=2 exports of `backbone` (224 px; Lite0 pretrained when possible)
    and a batch-8 input."""
    from cream_rt.benchmark.runner import sample_images, untrained_model
    from cream_rt.export.onnx_export import export_model
    from cream_rt.export.quantize import calibration_batches, quantize_export
    from cream_rt.model import create_model
    from cream_rt.preprocess import preprocess_batch

    model = untrained_model(backbone)
    if backbone == "efficientnet-lite0":
        try:
            model = create_model(backbone, 200, pretrained=True).eval()
        except Exception:  # weights package missing: random weights time the same
            pass
    cfg = model.config
    fp32, int8 = str(Path(folder) / f"{backbone}-fp32.onnx"), str(Path(folder) / f"{backbone}-int8.onnx")
    export_model(model, fp32, "cream", 2)
    images = sample_images(40, cfg.input_size, 1)
    quantize_export(fp32, int8, calibration_batches(images[:32], cfg.input_size, cfg.mean, cfg.std))
    x = preprocess_batch(images[32:40], cfg.input_size, cfg.mean, cfg.std)
    return fp32, int8, x, -np.ones(len(x), np.int64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet-lite0,resnet50")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timing per model pair")
    parser.add_argument("--out", default=None, help="JSON result file (e.g. bench/results/studies/int8_speed.json)")
    args = parser.parse_args(argv)
    from cream_rt.benchmark.latency import measure_interleaved, paired_ratio
    from cream_rt.runtime import make_session

    from .roofline import graph_flops

    peaks = gemm_peaks()
    bound = peaks["int8"] / peaks["fp32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            fp32, int8, x, ids = model_pair(backbone, tmp)
            sessions = {name: make_session(path, ["CPUExecutionProvider"]) for name, path in
                        (("fp32", fp32), ("int8", int8))}
            feed = {"images": x, "class_ids": ids}
            runs = {name: functools.partial(session.run, None, feed) for name, session in sessions.items()}
            stats = measure_interleaved(runs, budget_s=args.budget)
            gflop = sum(graph_flops(fp32, len(x)).values()) / 1e9
            speedup = paired_ratio(stats["fp32"], stats["int8"])
            rows.append({"backbone": backbone, "batch": len(x), "gflop_per_batch": round(gflop, 3),
                         "p50_ms": {k: round(v["p50_ms"], 2) for k, v in stats.items()},
                         "int8_vs_fp32": round(speedup, 3),
                         "fp32_fraction_of_gemm_peak": round(gflop / (stats["fp32"]["p50_ms"] / 1e3) / peaks["fp32"],
                                                             3),
                         "int8_fraction_of_gemm_peak": round(gflop / (stats["int8"]["p50_ms"] / 1e3) / peaks["int8"],
                                                             3),
                         "target_2x_met": speedup >= 2.0})
            print(f"{backbone} batch {len(x)}: fp32 {stats['fp32']['p50_ms']:.1f} ms, int8 "
                  f"{stats['int8']['p50_ms']:.1f} ms: int8 {speedup:.2f}x fp32 (target 2x; the GEMM bound is "
                  f"{bound:.2f}x)", flush=True)
    print(f"ONNX Runtime GEMM {GEMM_SIZE}^3: fp32 {peaks['fp32']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GOP/s "
          f"({bound:.2f}x)")
    result = {"benchmark": "int8_speed", "rows": rows, "gemm_peak_gops": {k: round(v, 1) for k, v in peaks.items()},
              "int8_vs_fp32_gemm_bound": round(bound, 3), "machine": machine_info(),
              "command": command_line("studies.int8_speed", argv)}
    if args.out:
        write_json(args.out, result, what="--out")
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
