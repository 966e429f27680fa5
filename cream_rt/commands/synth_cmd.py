"""`cream synth`: write the synthetic WSOL benchmark (images, masks, metadata) atomically."""
from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
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
