"""How close each engine runs to this CPU's fp32 matrix-multiply throughput, and so the largest
ONNX Runtime vs eager speed-up fp32 can give here: the model's multiply-adds counted from the
exported graph, a large fp32 GEMM in each engine as the practical peak, and the model timed in
both engines in one interleaved run.

`python -m bench.studies.roofline [--backbone resnet50] [--batch 8] [--out roofline.json]`"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from cream_rt.benchmark.machine import command_line


def graph_flops(path: str, batch: int) -> dict[str, float]:
    """Floating-point operations (2 per multiply-add) of one run of an exported model at `batch`,
    by op type, from ONNX shape inference: Conv, Gemm and MatMul (all else is negligible)."""
    import onnx

    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    flops: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if not weight or not out or 0 in out:
                raise ValueError(f"{path}: no static shape for Conv {node.name}")
            count = 2.0 * np.prod(out, dtype=np.float64) * np.prod(weight[1:], dtype=np.float64)
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not out or 0 in out or 0 in a:
                continue  # shape unknown: a small head op
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            count = 2.0 * np.prod(out, dtype=np.float64) * a[-2 if trans_a else -1]  # x the inner dimension
        else:
            continue
        flops[node.op_type] = flops.get(node.op_type, 0.0) + float(count)
    return flops


def gemm_peak(size: int = 1536, budget_s: float = 3.0) -> dict[str, float]:
    """GFLOP/s of a square fp32 GEMM in torch and in ONNX Runtime (this machine's practical fp32
    peak for each engine's own kernels)."""
    import onnx
    import onnx.helper as oh
    import torch

    from cream_rt.benchmark.latency import measure
    from cream_rt.runtime import make_session

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    ta = torch.from_numpy(a)
    flop = 2.0 * size ** 3
    out = {"torch": flop / measure(lambda: torch.mm(ta, ta), budget_s=budget_s)["p50_ms"] / 1e6}
    graph = oh.make_graph([oh.make_node("MatMul", ["a", "a"], ["c"])], "gemm",
                          [oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
                          [oh.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])])
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "gemm.onnx")
        onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)]), path)
        session = make_session(path, ["CPUExecutionProvider"])
        out["onnxruntime"] = flop / measure(lambda: session.run(None, {"a": a}), budget_s=budget_s)["p50_ms"] / 1e6
    return out


def roofline(backbone: str, batch: int, mode: str = "cream", iterations: int = 2, budget_s: float = 4.0) -> dict:
    """The model's GFLOP per image, each engine's GFLOP/s on it and on a GEMM, and the bound on
    ONNX Runtime vs eager that follows (ORT's best GEMM rate over eager's rate on the model)."""
    from cream_rt.benchmark.engines import build_engine
    from cream_rt.benchmark.latency import measure_interleaved, paired_ratio
    from cream_rt.benchmark.machine import machine_info
    from cream_rt.benchmark.runner import sample_images, untrained_model
    from cream_rt.export.onnx_export import export_model
    from cream_rt.preprocess import preprocess_batch

    model = untrained_model(backbone)
    cfg = model.config
    size = cfg.input_size
    x = preprocess_batch(sample_images(batch, size, 0), size, cfg.mean, cfg.std)
    ids = (np.arange(batch) % cfg.num_classes).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        export_model(model, path, mode, iterations)
        flops = graph_flops(path, batch)
        engines = {name: build_engine(name, model, path, mode, iterations, x, ids) for name in ("eager", "onnxruntime")}
        stats = measure_interleaved({n: e.run for n, e in engines.items()}, budget_s=budget_s * len(engines))
    gflop = sum(flops.values()) / 1e9
    peak = gemm_peak()
    rate = {n: gflop / (s["p50_ms"] / 1e3) for n, s in stats.items()}
    return {
        "backbone": backbone, "batch": batch, "mode": mode, "iterations": iterations,
        "gflop_per_batch": gflop, "gflop_by_op": {k: v / 1e9 for k, v in flops.items()},
        "p50_ms": {n: s["p50_ms"] for n, s in stats.items()},
        "model_gflops_per_s": rate, "gemm_gflops_per_s": peak,
        "fraction_of_gemm_peak": {n: rate[n] / max(peak.values()) for n in rate},
        "onnxruntime_vs_eager_measured": paired_ratio(stats["eager"], stats["onnxruntime"]),
        "onnxruntime_vs_eager_bound": max(peak.values()) / rate["eager"],
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per engine")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)
    result = roofline(args.backbone, args.batch, budget_s=args.budget)
    result["command"] = command_line("studies.roofline", argv)
    for name in ("eager", "onnxruntime"):
        print(f"{name:12s} {result['p50_ms'][name]:9.1f} ms  {result['model_gflops_per_s'][name]:6.1f} GFLOP/s on the "
              f"model ({100 * result['fraction_of_gemm_peak'][name]:.0f}% of the best GEMM rate)")
    print(f"model {result['gflop_per_batch'] / args.batch:.2f} GFLOP per image; GEMM peak "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["gemm_gflops_per_s"].items()) + " GFLOP/s")
    print(f"onnxruntime vs eager: {result['onnxruntime_vs_eager_measured']:.2f}x measured, "
          f"at most {result['onnxruntime_vs_eager_bound']:.2f}x at the GEMM peak")
    if args.out:
        from cream_rt.atomic import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    raise SystemExit(main())
