"""`cream train-regressor`: CREAM's second variant, a class-agnostic box regressor trained on
pseudo boxes from a CREAM checkpoint's maps."""
from __future__ import annotations

import argparse

from ..argtypes import EPOCHS, FRACTION, float_in
from .options import add_data, add_json
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream train-regressor`'s arguments."""
    add_data(p)
    p.add_argument("--checkpoint", required=True, help="the CREAM checkpoint whose maps give the pseudo boxes")
    p.add_argument("--out", required=True, help="regressor file to write (.pt)")
    p.add_argument("--epochs", type=EPOCHS, default=6)
    p.add_argument("--lr", type=float_in(0.0, 10.0, low_open=True), default=0.01,
                   help="learning rate of the backbone (the head: 10x)")
    p.add_argument("--threshold", type=FRACTION, default=None,
                   help="map threshold of the pseudo boxes (default: the best MaxBoxAcc threshold on the val split)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """`cream train-regressor` with the parsed arguments; returns the exit status."""
    from ..atomic import check_output_file
    from ..model.device import torch_device
    from ..train.regressor import train_regressor

    check_output_file(args.out, "--out")
    torch_device(args.device)
    record = train_regressor(args.checkpoint, args.data, args.out, images=args.images, metadata=args.metadata,
                             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threshold=args.threshold,
                             seed=args.seed, device=args.device)
    if args.json:
        print_json(record)
    else:
        print(f"wrote {record['regressor']} (pseudo boxes at map threshold {record['threshold']:.2f}); export it "
              "with `cream export --checkpoint CKPT --regressor REG`")
    return 0
