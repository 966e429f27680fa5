"""`cream bench`: build or load the model, export what the ONNX engines need, time them."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..atomic import check_output_file, write_json
from ..errors import CreamError
from .output import print_json


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.report import plot
    from ..bench.runner import BenchConfig, run_bench
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
        result = run_bench(model, onnx_models, config, log=lambda line: print(line, file=sys.stderr),
                           int8_models=int8_models)
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
    from ..bench.engines import ENGINE_NAMES

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
    from ..bench.runner import int8_exports
    from ..export.onnx_export import export_model

    given = None
    if given_path:
        from ..runtime import OnnxPredictor

        m = OnnxPredictor.load(given_path).manifest
        given = ((m.mode, m.iterations), m.precision)
    variants = ([("cam", 0)] if "cam" in config.modes else []) + \
               [("cream", t) for t in config.iterations if "cream" in config.modes]
    onnx_models, int8_models = {}, {}
    if {"onnxruntime", "onnxruntime-int8"} & set(config.engines) or config.pipeline:
        for mode, t in variants:
            if given == ((mode, t), "fp32"):
                onnx_models[(mode, t)] = given_path
                continue
            path = str(Path(folder) / f"{mode}{t}.onnx")
            export_model(model, path, mode, t)
            onnx_models[(mode, t)] = path
    if "onnxruntime-int8" in config.engines:
        own_int8 = given[0] if given and given[1] == "int8" else None
        int8_models = int8_exports({k: v for k, v in onnx_models.items() if k != own_int8}, model.config, folder)
        if own_int8 in onnx_models:
            int8_models[own_int8] = given_path
    return onnx_models, int8_models
