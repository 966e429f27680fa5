"""`cream parity`: the eager model and its export on the same images (see cream_rt.parity)."""
from __future__ import annotations

import argparse

from ..atomic import check_output_file, write_json
from ..metadata import read_split, split_paths
from .output import print_json, print_table


def run(args: argparse.Namespace) -> int:
    if args.results:
        check_output_file(args.results, "--results")
    from ..parity import compute_parity

    split_dir, images = split_paths(args.data, args.split, args.images, args.metadata)
    meta = read_split(split_dir)
    if args.limit:
        meta.image_ids = meta.image_ids[:args.limit]
    out = compute_parity(args.checkpoint, args.model, meta, images, args.batch_size, args.threshold, args.interval,
                         args.regressor)
    out["command"] = args.command_line
    if args.results:
        write_json(args.results, out, "--results")
    if args.json:
        print_json(out)
    else:
        print_table([(k, v) for k, v in out.items() if not isinstance(v, (dict, list))], "eager vs exported")
    return 0
