"""`cream bench`: build or load the model, export what the ONNX engines need, time them."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..argtypes import INPUT_SIZE, THREADS, float_in, int_in, int_list, name_list
from ..atomic import check_output_file, write_json
from ..errors import CreamError
from .options import add_json
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream bench`'s arguments."""
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a cream checkpoint")
    src.add_argument("--backbone", help="an untrained model of this backbone (timing only)")
    p.add_argument("--classes", type=int_in(1, 100_000), default=200,
                   help="classes of the --backbone model (default 200)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=None, help="input size of the --backbone model")
    p.add_argument("--model", help="an exported ONNX model to time for its mode and T (others are exported)")
    p.add_argument("--engines", type=name_list, default=("eager", "onnxruntime"),
                   help="comma-separated: eager, eager-fused (CREAM's EM in the C++/CUDA op), "
                        "eager-channels-last, torch-compile, onnxruntime, onnxruntime-int8 (int8 convolutions, "
                        "calibrated on synthetic images: timing only), openvino, openvino-bf16, openvino-int8 "
                        "(OpenVINO's CPU plugin on the same exports), tensorrt, grad-cam, torchcam "
                        "(default eager,onnxruntime)")
    p.add_argument("--batch-sizes", type=int_list(1, 4096), default=(1, 8))
    p.add_argument("--modes", type=name_list, default=("cam", "cream"))
    p.add_argument("--iterations", type=int_list(1, 32), default=(),
                   help="CREAM T values (default: the model's own, the backbone's shipped T for an import)")
    p.add_argument("--budget", type=float_in(0.0, 3600.0, low_open=True), default=2.0,
                   help="seconds of timed runs per measurement")
    p.add_argument("--no-pipeline", action="store_true", help="skip the Localizer pipeline breakdown")
    p.add_argument("--threads", type=THREADS, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the eager and ONNX Runtime engines run; tensorrt needs cuda (default cpu)")
    add_json(p, "print the results as one JSON object on stdout")
    p.add_argument("--json-out", metavar="PATH", help="write the results JSON to this file")
    p.add_argument("--plot", help="write a PNG of latency per image against batch size")


def run(args: argparse.Namespace) -> int:
    """`cream bench` with the parsed arguments; returns the exit status."""
    import torch

    from ..benchmark.runner import BenchConfig, plot, run_bench
    from ..model.device import torch_device

    _check_args(args)
    torch_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, model_hash = _model(args)
    config = BenchConfig(engines=tuple(args.engines), batch_sizes=tuple(args.batch_sizes), modes=tuple(args.modes),
                         iterations=tuple(args.iterations), budget_s=args.budget, pipeline=not args.no_pipeline,
                         device=args.device)
    print(f"cream bench: {model.config.backbone}, input {model.config.input_size}, engines {', '.join(config.engines)}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_models, int8_models = _exports(model, config, args.model, tmp)
        result = run_bench(model, onnx_models, config, int8_models=int8_models)
    result.update(backbone=model.config.backbone, input_size=model.config.input_size, model_sha256=model_hash,
                  command=args.command_line)
    human = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON
    for line in result["ratios"]:
        print(line, file=human)
    for skip in result["skipped"]:
        print(f"skipped {skip['engine']}: {skip['reason']}", file=human)
    if args.json:
        print_json(result)
    if args.json_out:
        write_json(args.json_out, result, "--json-out")
    if args.plot:
        plot(result, args.plot)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Every flag that can be wrong, before a model is built."""
    from ..benchmark.engines import ENGINE_NAMES

    for flag, path in (("--json-out", args.json_out), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)
    if bool(args.checkpoint) == bool(args.backbone):
        raise CreamError("pass exactly one of --checkpoint, --backbone")
    unknown = [e for e in args.engines if e not in ENGINE_NAMES]
    if unknown:
        raise CreamError(f"unknown engine {unknown[0]!r}; expected one of {', '.join(ENGINE_NAMES)}")
    bad_modes = [m for m in args.modes if m not in ("cam", "cream")]
    if bad_modes:
        raise CreamError(f"unknown mode {bad_modes[0]!r}; expected cam, cream")


def _model(args: argparse.Namespace):
    """(model in eval mode, checkpoint SHA-256 or "untrained") from --checkpoint or --backbone."""
    import torch

    from ..model.checkpoint import file_sha256, load_checkpoint
    from ..model.network import create_model

    if args.checkpoint:
        return load_checkpoint(args.checkpoint)[0], file_sha256(args.checkpoint)
    torch.manual_seed(0)
    sizes = {"input_size": args.input_size} if args.input_size else {}
    return create_model(args.backbone, args.classes, **sizes).eval(), "untrained"


def _exports(model, config, given_path: str | None, folder: str) -> tuple[dict, dict]:
    """fp32 and int8 ONNX files per (mode, T) the engines need; a `--model` file replaces the
    export of its own mode, T and precision."""
    from ..benchmark.engines import INT8_ENGINES
    from ..benchmark.runner import int8_exports
    from ..export.onnx_export import export_model

    given = None
    if given_path:
        from ..runtime import OnnxPredictor

        m = OnnxPredictor.load(given_path).manifest
        given = ((m.mode, m.iterations), m.precision)
    variants = ([("cam", 0)] if "cam" in config.modes else []) + \
               [("cream", t) for t in config.steps(model) if "cream" in config.modes]
    onnx_models: dict[tuple[str, int], str] = {}
    int8_models: dict[tuple[str, int], str] = {}
    if any(e.startswith(("onnxruntime", "openvino")) for e in config.engines) or config.pipeline:
        for mode, t in variants:
            if given_path and given == ((mode, t), "fp32"):
                onnx_models[(mode, t)] = given_path
                continue
            path = str(Path(folder) / f"{mode}{t}.onnx")
            export_model(model, path, mode, t)
            onnx_models[(mode, t)] = path
    if set(INT8_ENGINES) & set(config.engines):
        own_int8 = given[0] if given and given[1] == "int8" else None
        int8_models = int8_exports({k: v for k, v in onnx_models.items() if k != own_int8}, model.config, folder)
        if given_path and own_int8 in onnx_models:
            int8_models[own_int8] = given_path
    return onnx_models, int8_models
