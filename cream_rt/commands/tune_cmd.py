"""`cream tune`: choose CREAM's inference settings on a val split with boxes and write them,
with their val scores and the box threshold for `cream localize`, into a checkpoint."""
from __future__ import annotations

import argparse

from ..argtypes import INTERVAL, float_in, int_in, int_list, name_list
from ..config import REFINE_ROUNDS
from .options import add_data, add_json, add_max_bad_images
from .output import print_json, print_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream tune`'s arguments."""
    add_data(p, seed=False)
    p.add_argument("--checkpoint", required=True, help="a trained (or imported) cream checkpoint")
    p.add_argument("--out", required=True, help="the tuned checkpoint to write (.pt)")
    p.add_argument("--fit-split", default="train", help="the split whose images (labels only) the embeddings are "
                                                          "fitted on (default train)")
    p.add_argument("--val-split", default="val", help="the split with boxes that scores each setting (default val; "
                                                      "the test split is never read)")
    p.add_argument("--layers", type=name_list, default=None,
                   help="comma-separated candidate EM layers or places (stage5.last) (default: every layer on the "
                        "CAM's grid or one stride-2 step finer, and cam)")
    p.add_argument("--iterations", type=int_list(1, 32), default=(1, 2, 3), help="candidate T (default 1,2,3)")
    p.add_argument("--search", choices=["staged", "full"], default="staged",
                   help="staged (default): every layer x center, then T, feature mean and embeddings around the 3 "
                        "best; full: every combination")
    p.add_argument("--refine", type=int_in(0, 100), default=REFINE_ROUNDS,
                   help=f"refinement rounds of each fit (default {REFINE_ROUNDS})")
    p.add_argument("--min-gain", type=float_in(0.0, 100.0), default=None,
                   help="MaxBoxAccV2 points on val a setting must gain over the checkpoint's own to replace it "
                        "(default: 100 / val images, at least 1: one image's worth at every IoU threshold)")
    p.add_argument("--interval", type=INTERVAL, default=0.01, help="score-threshold step (default 0.01)")
    p.add_argument("--cache-gb", type=float_in(0.05, 4096.0), default=4.0,
                   help="memory for the cached features (default 4); a larger fit split is sampled for the search "
                        "and the chosen embeddings are fitted on all of it")
    add_max_bad_images(p)
    add_json(p, "print the result (every setting's val scores) as one JSON object")


def run(args: argparse.Namespace) -> int:
    """`cream tune` with the parsed arguments; returns the exit status."""
    from ..atomic import check_output_file
    from ..metadata import data_paths
    from ..model.device import torch_device
    from ..train.tune import tune_checkpoint

    check_output_file(args.out, "--out")
    torch_device(args.device)
    image_root, meta_root = data_paths(args.data, args.images, args.metadata)
    record = tune_checkpoint(args.checkpoint, image_root, meta_root, args.out, fit_split=args.fit_split,
                             val_split=args.val_split, layers=list(args.layers) if args.layers else None,
                             iterations=args.iterations, search=args.search, rounds=args.refine,
                             interval=args.interval, cache_bytes=args.cache_gb * 1e9, batch_size=args.batch_size,
                             device=args.device, max_bad_images=args.max_bad_images, min_gain=args.min_gain)
    if args.json:
        print_json(record)
        return 0
    rows = sorted(record["rows"], key=lambda r: -r["MaxBoxAccV2"])
    cam = record["val_cam"]["MaxBoxAccV2"]
    print_table([(r["name"], f"{r['MaxBoxAccV2']:.2f}") for r in rows[:15]],
                f"val MaxBoxAccV2 of the {len(rows)} settings scored"
                + (f" (best 15; CAM {cam:.2f})" if len(rows) > 15 else f" (CAM {cam:.2f})"))
    print(f"chose {record['name']}: val MaxBoxAccV2 {record['val']['MaxBoxAccV2']:.2f} (the checkpoint's "
          f"{record['val_default']['MaxBoxAccV2']:.2f}; another must gain {record['min_gain']:.2f}), box threshold "
          f"{record['box_threshold']:.2f}; wrote {args.out}")
    return 0
