"""`cream import`: a wsolevaluation or torchvision CAM checkpoint -> a cream checkpoint
(then `cream fit-embeddings` gives it CREAM)."""
from __future__ import annotations

import argparse

from .output import print_json


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..errors import CreamError
    from ..model.checkpoint import file_sha256, save_checkpoint
    from ..model.importers import import_checkpoint

    check_output_file(args.out, "--out")
    names = None
    if args.class_names:
        try:
            with open(args.class_names, encoding="utf-8") as handle:
                names = [line.strip() for line in handle if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CreamError(f"--class-names {args.class_names}: not a readable text file "
                             f"({exc.__class__.__name__})") from None
    model = import_checkpoint(args.checkpoint, args.source, args.arch, args.classes, args.large_feature_map, names)
    record = {"imported": {"from": args.source, "checkpoint": str(args.checkpoint), "arch": args.arch,
                           "sha256": file_sha256(args.checkpoint), "classes": model.config.num_classes,
                           "large_feature_map": args.large_feature_map}}
    save_checkpoint(args.out, model, record)
    if args.json:
        print_json({"checkpoint": str(args.out), **record})
    else:
        print(f"wrote {args.out}: {args.arch} CAM model from {args.source}, {model.config.num_classes} classes; "
              "run `cream fit-embeddings` to learn its CREAM embeddings")
    return 0
