"""`cream bench` and its latency helper: structure of the results on a tiny model (the speed
targets themselves live in bench/, measured as ratios in one run)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("torch")
from cream_rt.benchmark.latency import measure, measure_interleaved, paired_ratio  # noqa: E402
from cream_rt.cli import main  # noqa: E402


def test_measure_percentiles_of_a_known_delay():
    stats = measure(lambda: time.sleep(0.002), warmup=1, min_repeats=5, max_repeats=5, budget_s=0)
    assert stats["repeats"] == 5 and 2.0 <= stats["p50_ms"] < 20 and stats["p50_ms"] <= stats["p99_ms"]


def test_paired_ratio_cancels_drift_between_rounds():
    # round medians drift 10x between rounds; within each round b is twice as slow as a
    a = {"p50_ms": 5.0, "round_p50_ms": [1.0, 10.0, 100.0]}
    b = {"p50_ms": 20.0, "round_p50_ms": [2.0, 20.0, 200.0]}
    assert paired_ratio(b, a) == pytest.approx(2.0) and paired_ratio(a, b) == pytest.approx(0.5)
    assert paired_ratio({"p50_ms": 3.0}, {"p50_ms": 1.5}) == pytest.approx(2.0)  # no rounds: plain ratio


def test_measure_interleaved_records_one_median_per_round():
    stats = measure_interleaved({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.003)},
                                rounds=3, min_per_block=2, budget_s=0)
    assert [len(s["round_p50_ms"]) for s in stats.values()] == [3, 3] and stats["slow"]["repeats"] == 6
    assert 1.5 < paired_ratio(stats["slow"], stats["fast"]) < 4


def test_bench_cli_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "--backbone", "small-cnn", "--classes", "3", "--input-size", "48", "--engines",
            "eager,onnxruntime,tensorrt", "--batch-sizes", "1,2", "--budget", "0.05", "--json-out", str(out)]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(png)]
    except ImportError:
        png = None
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    combos = {(r["engine"], r["mode"], r["batch"]) for r in result["rows"]}
    assert combos == {(e, m, b) for e in ("eager", "onnxruntime") for m in ("cam", "cream") for b in (1, 2)}
    assert all(r["p50_ms"] > 0 and r["images_per_s"] > 0 for r in result["rows"])
    assert [p["batch"] for p in result["pipeline"]] == [1, 2] and all(p["streamed_ms"] > 0 for p in result["pipeline"])
    assert any(s["engine"] == "tensorrt" for s in result["skipped"]) or "tensorrt" in result["machine"]["versions"]
    assert "onnxruntime vs eager, cream T=2, batch 1: speed-up" in printed
    assert result["machine"]["cpus"] and result["command"].startswith("cream bench")
    if png:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_rejects_unknown_engine(capsys):
    assert main(["bench", "--backbone", "small-cnn", "--engines", "warp-drive"]) == 2
    assert "unknown engine 'warp-drive'" in capsys.readouterr().err


def test_graph_flops_counts_conv_and_gemm_by_hand(tmp_path):
    """Conv 3->4, 3x3, stride 2, pad 1 on 8x8 (4x4 out): 2 * (2*4*4*4) * (3*3*3) = 6912 flops at
    batch 2; Gemm (2,64) x (64,5): 2 * 2*5 * 64 = 1280; a dynamic batch axis is fixed first."""
    import onnx
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    from bench.studies.roofline import graph_flops

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "g"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             oh.make_node("Reshape", ["c", "shape"], ["flat"]),
             oh.make_node("Gemm", ["flat", "g"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    path = str(tmp_path / "m.onnx")
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)]), path)
    assert graph_flops(path, 2) == {"Conv": 6912.0, "Gemm": 1280.0}


def test_graph_flops_reads_the_inner_dimension_of_a_transposed_gemm(tmp_path):
    """Gemm with transA: A is (K=64, M=2), B (64, 5), out (2, 5): 2 * 2*5 * 64 = 1280 flops
    (not 2 * 10 * 2, which reading A's last axis would give)."""
    import onnx
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    from bench.studies.roofline import graph_flops

    b = numpy_helper.from_array(np.ones((64, 5), np.float32), "b")
    graph = oh.make_graph([oh.make_node("Gemm", ["a", "b"], ["y"], transA=1)], "g",
                          [oh.make_tensor_value_info("a", TensorProto.FLOAT, [64, 2])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], [b])
    path = str(tmp_path / "t.onnx")
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)]), path)
    assert graph_flops(path, 1) == {"Gemm": 1280.0}
