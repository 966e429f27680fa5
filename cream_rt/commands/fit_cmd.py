"""`cream fit-embeddings`: learn CREAM's context embeddings of a trained (frozen) CAM model."""
from __future__ import annotations

import argparse
import json


def _rounds(args: argparse.Namespace) -> int:
    """--refine, or its default for the estimate: the trainer's rounds for the pass, none otherwise."""
    from ..cli import REFINE_ROUNDS_DEFAULT

    if args.refine is not None:
        return args.refine
    return REFINE_ROUNDS_DEFAULT if args.estimate == "pass" else 0


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..model.device import torch_device
    from ..train.trainer import fit_embeddings as run_fit

    check_output_file(args.out, "--out")
    torch_device(args.device)
    record = run_fit(args.checkpoint, args.data, args.out, args.images, args.metadata, args.momentum,
                     args.epochs, args.batch_size, args.seed, args.device, feature_mean=args.feature_mean,
                     refine=_rounds(args), estimate=args.estimate, center=args.center,
                     em_layer=args.em_layer)
    print(json.dumps(record) if args.json else f"wrote {record['checkpoint']} ({record['images']} images seen)")
    return 0
