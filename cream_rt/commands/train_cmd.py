"""`cream train`: train a CAM model with CREAM's context-embedding learning."""
from __future__ import annotations

import argparse
import os
import sys

from .output import print_json


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..model.config import CreamConfig
    from ..model.device import torch_device
    from ..train.trainer import TrainConfig
    from ..train.trainer import train as run_train

    check_output_file(args.out, "--out")
    torch_device(args.device)

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         lr_decay_epochs=tuple(args.lr_decay_epochs), weight_decay=args.weight_decay,
                         seed=args.seed, device=args.device, workers=args.workers, pretrained=args.pretrained,
                         bn_batches=args.bn_batches, embedding_pass=args.embedding_pass, refine_rounds=args.refine)
    from ..errors import CreamError

    try:
        cream = CreamConfig(iterations=args.iterations, beta=args.beta, tau=args.tau, momentum=args.momentum,
                            feature_mean=args.feature_mean, border=args.border, calibration=args.calibration,
                            upsample=args.upsample, adapt_fg=args.adapt_fg, adapt_bg=args.adapt_bg,
                            center=args.center, em_layer=args.em_layer)
    except ValueError as exc:
        raise CreamError(str(exc)) from None
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    record = run_train(args.backbone, args.data, args.out, args.images, args.metadata, config, cream,
                       args.input_size, args.large_feature_map, args.tap, args.nwc, args.resume, log, pas=args.pas)
    if args.json and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 speaks for the job
        print_json(record)
    return 0
