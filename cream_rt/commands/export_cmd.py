"""`cream export`: checkpoint -> ONNX."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, args.mode, args.iterations, args.opset,
                                 args.external_data)
    if args.json:
        print(json.dumps(asdict(manifest), indent=2))
    else:
        print(f"wrote {args.out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, "
              f"input {manifest.input_size}x{manifest.input_size}, {len(manifest.class_names)} classes")
    return 0
