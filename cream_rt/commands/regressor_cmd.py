"""`cream train-regressor`: CREAM's second variant, a class-agnostic box regressor trained on
pseudo boxes from a CREAM checkpoint's maps."""
from __future__ import annotations

import argparse
import sys

from .output import print_json


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..model.device import torch_device
    from ..train.regressor import train_regressor

    check_output_file(args.out, "--out")
    torch_device(args.device)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    record = train_regressor(args.checkpoint, args.data, args.out, args.images, args.metadata, args.epochs,
                             args.batch_size, args.lr, args.threshold, args.seed, args.device, log)
    if args.json:
        print_json(record)
    else:
        print(f"wrote {record['regressor']} (pseudo boxes at map threshold {record['threshold']:.2f}); export it "
              "with `cream export --checkpoint CKPT --regressor REG`")
    return 0
