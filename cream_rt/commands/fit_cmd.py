"""`cream fit-embeddings`: learn CREAM's context embeddings of a trained (frozen) CAM model."""
from __future__ import annotations

import argparse
import json

from ..argtypes import EPOCHS, float_in, int_in
from ..config import REFINE_ROUNDS
from .options import add_data, add_embedding_options, add_json, add_max_bad_images


def _rounds(args: argparse.Namespace) -> int:
    """--refine, or its default for the estimate: the trainer's rounds for the pass, none otherwise."""
    if args.refine is not None:
        return args.refine
    return REFINE_ROUNDS if args.estimate == "pass" else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream fit-embeddings`'s arguments."""
    add_data(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=EPOCHS, default=1)
    p.add_argument("--momentum", type=float_in(0.0, 1.0, high_open=True), default=None,
                   help="lambda in [0, 1) (default: the checkpoint's)")
    p.add_argument("--feature-mean", choices=["raw", "unit"], default=None,
                   help="raw or L2-normalised feature means, for the embeddings and the EM (default: the checkpoint's)")
    p.add_argument("--refine", type=int_in(0, 100), default=None,
                   help="with --estimate pass: refinement rounds after the class means "
                        f"(default {REFINE_ROUNDS}); "
                        "with momentum, instead of a fresh fit: refine the checkpoint's embeddings for R rounds, the "
                        "EM's calibrated responsibilities as soft masks over the train split (default 0: off)")
    p.add_argument("--estimate", choices=["pass", "momentum"], default="pass",
                   help="pass: the embedding pass `cream train` ends with (feature center, class means under the "
                        "CAM's mask, --refine rounds; eval transform); momentum: the paper's momentum rule over "
                        "augmented images for --epochs (default pass)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help="with --estimate pass: subtract the split's mean feature before the EM (default: the "
                        "checkpoint's setting; with --em-layer naming the backbone's default layer, the backbone's)")
    p.add_argument("--em-layer", default=None, metavar="LAYER",
                   help="the layer whose features the EM clusters: 'cam', an earlier layer on the CAM's grid or one "
                        "stride-2 step finer (`cream backbones --layers NAME`), or a place such as stage5.last; "
                        "another than the checkpoint's estimates new embeddings (default: the checkpoint's)")
    add_embedding_options(p, "the checkpoint's")
    add_max_bad_images(p)
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """`cream fit-embeddings` with the parsed arguments; returns the exit status."""
    from ..atomic import check_output_file
    from ..model.device import torch_device
    from ..train.embeddings import SplitOptions, fit_embeddings, fit_embeddings_momentum, refine_checkpoint

    check_output_file(args.out, "--out")
    torch_device(args.device)
    split = SplitOptions(args.images, args.metadata, args.batch_size, args.seed, args.device, args.max_bad_images)
    cream = {"feature_mean": args.feature_mean, "momentum": args.momentum, "embeddings": args.embeddings,
             "fallback": args.fallback}
    if args.estimate == "pass":
        record = fit_embeddings(args.checkpoint, args.data, args.out, rounds=_rounds(args), center=args.center,
                                em_layer=args.em_layer, split=split, **cream)
    elif args.refine:  # momentum with --refine R: R rounds of the EM's soft masks from the checkpoint's embeddings
        record = refine_checkpoint(args.checkpoint, args.data, args.out, rounds=args.refine, em_layer=args.em_layer,
                                   split=split, **cream)
    else:
        record = fit_embeddings_momentum(args.checkpoint, args.data, args.out, epochs=args.epochs,
                                         em_layer=args.em_layer, split=split, **cream)
    print(json.dumps(record) if args.json else f"wrote {record['checkpoint']} ({record['images']} images seen)")
    return 0
