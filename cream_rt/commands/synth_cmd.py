"""`cream synth`: write the synthetic WSOL benchmark (images, masks, metadata) atomically."""
from __future__ import annotations

import argparse

from ..argtypes import NON_NEGATIVE, float_in, int_in


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream synth`'s arguments."""
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="default",
                   help="named data design: default, no-decoys, tinted, small, clutter, photo (see the docs); "
                        "the flags below override it")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--classes", type=int_in(2, 64), default=None, help="(default 6)")
    p.add_argument("--size", type=int_in(32, 4096), default=None, help="image side in pixels (default 96)")
    p.add_argument("--train", type=int_in(1, 10_000_000), default=3000)
    p.add_argument("--val", type=int_in(1, 10_000_000), default=300)
    p.add_argument("--test", type=int_in(1, 10_000_000), default=600)
    p.add_argument("--body-tint", type=float_in(0.0, 1.0), default=None,
                   help="faint class tint of the shared body (0: identical bodies)")
    p.add_argument("--decoys", type=int_in(0, 16), default=None,
                   help="at most this many bodiless heads of other classes per image (default 2)")
    p.add_argument("--body-patches", type=int_in(0, 16), default=None,
                   help="at most this many head-less body-texture patches on the background (default 0)")


def run(args: argparse.Namespace) -> int:
    """`cream synth` with the parsed arguments; returns the exit status."""
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
