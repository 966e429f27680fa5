"""`cream export`: checkpoint -> ONNX."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def run(args: argparse.Namespace) -> int:
    from ..errors import CreamError
    from ..export.onnx_export import export_checkpoint

    if args.trt:
        from ..export.tensorrt_build import import_tensorrt

        import_tensorrt()  # fail before exporting when TensorRT is missing
        if len(args.batch_profile) != 3 or not 1 <= args.batch_profile[0] <= args.batch_profile[1] <= args.batch_profile[2]:
            raise CreamError(f"--batch-profile must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {args.batch_profile}")

    manifest = export_checkpoint(args.checkpoint, args.out, args.mode, args.iterations, args.opset,
                                 args.external_data, args.fused)
    if args.trt:
        from ..export.tensorrt_build import build_engine

        built = build_engine(args.out, args.trt, args.fp16, tuple(args.batch_profile), args.timing_cache)
        print(f"wrote TensorRT engine {built['engine']} (fp16={built['fp16']}, batch {built['batch_profile']})")
    if args.json:
        print(json.dumps(asdict(manifest), indent=2))
    else:
        print(f"wrote {args.out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, "
              f"input {manifest.input_size}x{manifest.input_size}, {len(manifest.class_names)} classes")
    return 0
