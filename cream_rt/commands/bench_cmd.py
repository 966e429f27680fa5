"""`cream bench`: build or load the model, export what the ONNX engines need, time them."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..atomic import write_json
from ..errors import CreamError


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.engines import ENGINE_NAMES
    from ..bench.runner import BenchConfig, int8_exports, plot, run_bench
    from ..export.onnx_export import export_model
    from ..model.checkpoint import file_sha256, load_checkpoint

    from ..atomic import check_output_file

    for flag, path in (("--json", args.json_out), ("--plot", args.plot)):
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
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        model_hash = file_sha256(args.checkpoint)
    else:
        from ..model.backbones import get_backbone
        from ..model.config import ModelConfig
        from ..model.network import CamModel

        spec = get_backbone(args.backbone)
        torch.manual_seed(0)
        model = CamModel(ModelConfig(backbone=args.backbone, num_classes=args.classes,
                                     input_size=args.input_size or spec.input_size)).eval()
        model_hash = "untrained"
    config = BenchConfig(engines=tuple(args.engines), batch_sizes=tuple(args.batch_sizes), modes=tuple(args.modes),
                         iterations=tuple(args.iterations), budget_s=args.budget, pipeline=not args.no_pipeline)
    variants = ([("cam", 0)] if "cam" in config.modes else []) + \
               [("cream", t) for t in config.iterations if "cream" in config.modes]
    print(f"cream bench: {model.config.backbone}, input {model.config.input_size}, engines {', '.join(config.engines)}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        given = None  # the --model file's (mode, T) and precision: it replaces that export
        if args.model:
            from ..runtime import OnnxPredictor

            m = OnnxPredictor.load(args.model).manifest
            given = ((m.mode, m.iterations), m.precision)
        onnx_models, int8_models = {}, {}
        if {"onnxruntime", "onnxruntime-int8"} & set(config.engines) or config.pipeline:
            for mode, t in variants:
                if given == ((mode, t), "fp32"):
                    onnx_models[(mode, t)] = args.model
                    continue
                path = str(Path(tmp) / f"{mode}{t}.onnx")
                export_model(model, path, mode, t)
                onnx_models[(mode, t)] = path
        if "onnxruntime-int8" in config.engines:
            own_int8 = given[0] if given and given[1] == "int8" else None
            int8_models = int8_exports({k: v for k, v in onnx_models.items() if k != own_int8}, model.config, tmp)
            if own_int8 in onnx_models:
                int8_models[own_int8] = args.model
        result = run_bench(model, onnx_models, config, log=lambda line: print(line, file=sys.stderr),
                           int8_models=int8_models)
    result["backbone"] = model.config.backbone
    result["input_size"] = model.config.input_size
    result["model_sha256"] = model_hash
    result["command"] = args.command_line
    for line in result["ratios"]:
        print(line)
    for skip in result["skipped"]:
        print(f"skipped {skip['engine']}: {skip['reason']}")
    if args.json_out:
        write_json(args.json_out, result, "--json")
    if args.plot:
        plot(result, args.plot)
    return 0
