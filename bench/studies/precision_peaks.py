"""The limit (issue 41, item 4): this CPU's matrix-multiply peaks in fp32, bf16 and int8 (a large
square GEMM in ONNX Runtime and in OpenVINO, int8 as a QDQ MatMul), and the shipped Lite0's
inference as a fraction of the peak of its own precision: the model's multiply-adds counted from
the export (`roofline.graph_flops`) over its latency per engine, timed in one interleaved run.

    python -m bench.studies.precision_peaks --fp32 fp32.onnx --int8 int8.onnx --out precision_peaks.json
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.latency import measure_interleaved
from cream_rt.benchmark.machine import command_line, machine_info

from .roofline import graph_flops


def gemm_graph(path: Path, size: int, int8: bool) -> None:
    """A (size x size) @ (size x size) MatMul as ONNX: fp32, or with int8 as QDQ (uint8 activations,
    int8 weights, the pattern our int8 exports use)."""
    import onnx
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((size, size)).astype(np.float32)
    if not int8:
        nodes = [oh.make_node("MatMul", ["a", "w"], ["c"])]
        inits = [numpy_helper.from_array(weight, "w")]
    else:
        nodes = [oh.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
                 oh.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
                 oh.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
                 oh.make_node("MatMul", ["ad", "wd"], ["c"])]
        inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sa"),
                 numpy_helper.from_array(np.array(128, np.uint8), "za"),
                 numpy_helper.from_array(np.clip(weight * 40, -127, 127).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.array(0.025, np.float32), "sw"),
                 numpy_helper.from_array(np.array(0, np.int8), "zw")]
    graph = oh.make_graph(nodes, "gemm", [oh.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                          [oh.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], inits)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)]), str(path))


def runner(path: Path, engine: str):
    """`run(x)` of an ONNX file on `engine`: onnxruntime, openvino-f32 or openvino-bf16."""
    if engine == "onnxruntime":
        from cream_rt.session import make_session

        session = make_session(str(path), ["CPUExecutionProvider"], spinning=False)
        name = session.get_inputs()[0].name
        return lambda feeds: session.run(None, feeds if isinstance(feeds, dict) else {name: feeds})
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": engine.split("-")[1],
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def main(argv: list[str] | None = None) -> None:
    """GEMM peaks, the model's rates, the fractions; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", required=True, help="the shipped model's fp32 export")
    p.add_argument("--int8", required=True, help="its int8 export")
    p.add_argument("--size", type=int, default=1536, help="GEMM side")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", type=float, default=3.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    a = np.random.default_rng(1).standard_normal((args.size, args.size)).astype(np.float32)
    gemm_flop = 2.0 * args.size ** 3
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": Path(tmp) / "gemm32.onnx", "int8": Path(tmp) / "gemm8.onnx"}
        gemm_graph(paths["fp32"], args.size, False)
        gemm_graph(paths["int8"], args.size, True)
        gemms = {"onnxruntime fp32": runner(paths["fp32"], "onnxruntime"),
                 "onnxruntime int8": runner(paths["int8"], "onnxruntime"),
                 "openvino fp32": runner(paths["fp32"], "openvino-f32"),
                 "openvino bf16": runner(paths["fp32"], "openvino-bf16"),
                 "openvino int8": runner(paths["int8"], "openvino-f32")}
        stats = measure_interleaved({k: (lambda run=run: run({"a": a})) for k, run in gemms.items()},
                                    budget_s=args.budget * len(gemms))
        peaks = {k: gemm_flop / s["p50_ms"] / 1e6 for k, s in stats.items()}  # GFLOP/s
    model_flop = sum(graph_flops(args.fp32, args.batch).values())
    x = np.random.default_rng(2).normal(0, 1, (args.batch, 3, 224, 224)).astype(np.float32)
    feeds = {"images": x, "class_ids": np.full(args.batch, -1, np.int64)}
    models = {"onnxruntime fp32": runner(Path(args.fp32), "onnxruntime"),
              "onnxruntime int8": runner(Path(args.int8), "onnxruntime"),
              "openvino fp32": runner(Path(args.fp32), "openvino-f32"),
              "openvino bf16": runner(Path(args.fp32), "openvino-bf16"),
              "openvino int8": runner(Path(args.int8), "openvino-f32")}
    stats = measure_interleaved({k: (lambda run=run: run(feeds)) for k, run in models.items()},
                                budget_s=args.budget * len(models))
    rows = {}
    for key, s in stats.items():
        rate = model_flop / s["p50_ms"] / 1e6
        rows[key] = {"gemm_peak_gflop_s": round(peaks[key], 1), "model_gflop_s": round(rate, 1),
                     "fraction_of_own_peak": round(rate / peaks[key], 3),
                     "model_ms_per_image": round(s["p50_ms"] / args.batch, 3)}
        print(f"{key:17} GEMM {peaks[key]:8.1f} GFLOP/s   model {rate:6.1f} GFLOP/s = {rate / peaks[key]:.1%} of it "
              f"({s['p50_ms'] / args.batch:.2f} ms/img)")
    write_json(Path(args.out), {"rows": rows, "model_gflop_per_image": round(model_flop / args.batch / 1e9, 4),
                                "gemm_size": args.size, "batch": args.batch, "machine": machine_info(),
                                "command": command_line("studies.precision_peaks", argv)})


if __name__ == "__main__":
    main()
