"""Which CPU engine runs the shipped default fastest, and at what accuracy (issue 41, item 1):
ONNX Runtime fp32 and int8 (our QDQ export) beside OpenVINO's CPU plugin on the same files (fp32,
bf16 where the CPU has it, and the int8 QDQ export), timed in one interleaved run at batch 1 and 8,
each scored on the ilsvrc_dev test split (MaxBoxAccV2, top-1) and compared with ONNX Runtime
fp32's maps and logits.

    pip install openvino==2026.4.1
    python -m bench.studies.cpu_engines --checkpoint FITTED.pt --out bench/results/studies/cpu_engines.json
    python -m bench.studies.cpu_engines --checkpoint CELL.pt --data ../shared/data/real/fruits --out ...

`--data` scores a trained cell's test split instead (raccoon_kangaroo, fruits: the checkpoint
`python -m bench.accuracy` trains for the cell); int8 is calibrated on that data set, as the
accuracy suite's int8 rows are.
"""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.latency import measure_interleaved, paired_ratio
from cream_rt.benchmark.machine import command_line, machine_info

from ..accuracy import REAL_DATA, cli

# (normalised batch, class ids: -1 for the predicted one) -> (logits, maps)
Run = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def onnxruntime_engine(path: Path) -> Run:
    """ONNX Runtime as `cream localize` runs it."""
    from cream_rt.runtime import OnnxPredictor

    predictor = OnnxPredictor.load(path, spinning=False)
    return lambda x, ids: predictor(x, ids)


def openvino_engine(path: Path, precision: str) -> Run:
    """OpenVINO's CPU plugin on the ONNX file, inference precision `precision` (f32 or bf16; an int8
    QDQ file runs its int8 parts in int8 either way), latency hint."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = request.infer({"images": x, "class_ids": ids})
        return out[compiled.output("logits")], out[compiled.output("maps")]
    return run


def score(run: Run, batches: list[tuple[list[str], np.ndarray, np.ndarray]], meta, input_size: int,
          reference: dict | None) -> tuple[dict, dict]:
    """(metrics on the split, the outputs kept for the comparison with the reference engine): the
    maps of each image's labelled class, as wsolevaluation and `cream eval` score them."""
    from cream_rt.scoring import SplitScorer

    scorer = SplitScorer(meta, input_size, 0.01)
    kept: dict = {"logits": [], "maps": []}
    for chunk, x, labels in batches:
        logits, maps = run(x, labels.astype(np.int64))
        scorer.add(chunk, logits, maps)
        kept["logits"].append(logits)
        kept["maps"].append(maps)
    result = scorer.result()
    row = {k: result[k] for k in ("MaxBoxAccV2", "GT_known_Loc", "Top1_Loc", "classification_top1")}
    if reference is not None:
        maps, ref_maps = np.concatenate(kept["maps"]), np.concatenate(reference["maps"])
        logits, ref_logits = np.concatenate(kept["logits"]), np.concatenate(reference["logits"])
        row.update(maps_max_abs_diff=float(np.abs(maps - ref_maps).max()),
                   maps_p99_abs_diff=float(np.percentile(np.abs(maps - ref_maps), 99)),
                   logits_max_abs_diff=float(np.abs(logits - ref_logits).max()),
                   top1_agreement=float((logits.argmax(1) == ref_logits.argmax(1)).mean()))
    return row, kept


def main(argv: list[str] | None = None) -> None:
    """Export, time and score every engine; write the JSON."""
    from cream_rt.metadata import read_split
    from cream_rt.scoring import split_batches

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the fitted stock classifier (bench.shipped's *-fit.pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=3.0, help="timed seconds per engine and batch size")
    p.add_argument("--data", default=None, help="the data set whose test split is scored (default ilsvrc_dev)")
    p.add_argument("--no-timing", action="store_true", help="accuracy only (the timings do not depend on the data)")
    args = p.parse_args(argv)
    root = Path(args.data) if args.data else REAL_DATA / "ilsvrc_dev"
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        manifest = cli(["export", "--checkpoint", args.checkpoint, "--out", str(fp32), "--mode", "cream"])
        cli(["export", "--checkpoint", args.checkpoint, "--out", str(int8), "--mode", "cream", "--int8",
             "--calibration-data", str(root)])
        engines = {"onnxruntime-fp32": onnxruntime_engine(fp32), "onnxruntime-int8": onnxruntime_engine(int8)}
        try:
            engines.update({"openvino-fp32": openvino_engine(fp32, "f32"),
                            "openvino-bf16": openvino_engine(fp32, "bf16"),
                            "openvino-int8": openvino_engine(int8, "f32")})
        except ImportError:
            print("openvino is not installed: its rows are left out (pip install openvino)")
        size = manifest["input_size"]
        rng = np.random.default_rng(0)
        timing: dict = {"batch1": {name: {} for name in engines}, "batch8": {name: {} for name in engines}}
        for batch in () if args.no_timing else (1, 8):
            x = rng.normal(0, 1, (batch, 3, size, size)).astype(np.float32)
            ids = np.full(batch, -1, np.int64)  # the predicted class, as `cream localize` runs
            calls = {name: (lambda run=run, x=x, ids=ids: run(x, ids)) for name, run in engines.items()}
            stats = measure_interleaved(calls, budget_s=args.budget * len(engines))
            base = stats["onnxruntime-fp32"]
            timing[f"batch{batch}"] = {name: {"ms_per_image": s["p50_ms"] / batch, "p90_ms": s["p90_ms"],
                                              "speedup_vs_onnxruntime_fp32": 1 / paired_ratio(s, base)}
                                       for name, s in stats.items()}
        meta = read_split(root / "metadata" / "test")
        batches = list(split_batches(meta, root / "images", 8, size, manifest["mean"], manifest["std"], "test"))
        accuracy, reference = {}, None
        for name, run in engines.items():
            accuracy[name], kept = score(run, batches, meta, size, reference)
            reference = reference or kept
    rows = {name: {**timing["batch1"][name], "batch8": timing["batch8"][name], **accuracy[name]} for name in engines}
    for name, row in rows.items():
        speed = "" if args.no_timing else (
            f"b1 {row['ms_per_image']:6.2f} ms ({row['speedup_vs_onnxruntime_fp32']:.2f}x)  "
            f"b8 {row['batch8']['ms_per_image']:6.2f} ms ({row['batch8']['speedup_vs_onnxruntime_fp32']:.2f}x)  ")
        print(f"{name:18} {speed}MaxBoxAccV2 {row['MaxBoxAccV2']:.2f}  top-1 {row['classification_top1']:.1f}")
    write_json(Path(args.out), {"rows": rows, "data": str(root), "model": manifest["model"]["backbone"],
                                "iterations": manifest["iterations"], "images": len(meta.image_ids),
                                "machine": machine_info(), "command": command_line("studies.cpu_engines", argv)})


if __name__ == "__main__":
    main()
