"""`cream parity`: a reference and an export on the same images (see cream_rt.parity), and with
--per-layer, where an int8 export drifts from its fp32 source (see cream_rt.export.layer_drift)."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..argtypes import BATCH_SIZE, FRACTION, INTERVAL, POSITIVE
from ..atomic import check_output_file, write_json
from ..errors import CreamError
from ..metadata import read_split, split_paths
from .options import add_json
from .output import print_json, print_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream parity`'s arguments."""
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--checkpoint", help="the reference: the eager model of this checkpoint")
    ref.add_argument("--reference", metavar="FP32.onnx",
                     help="the reference: the fp32 export an --int8 MODEL was quantized from (no torch needed)")
    p.add_argument("--model", required=True)
    p.add_argument("--per-layer", action="store_true",
                   help="int8 MODEL: also compare every quantized activation with the fp32 graph's (needs onnx; "
                        "with --checkpoint, the fp32 reference is exported on the fly)")
    p.add_argument("--per-layer-images", type=POSITIVE, default=64,
                   help="images the --per-layer report runs on (default 64)")
    p.add_argument("--data", help="data root with images/ and metadata/")
    p.add_argument("--images", help="image root (instead of DATA/images)")
    p.add_argument("--metadata", help="metadata split folder, or a metadata root with SPLIT/ "
                                      "(instead of DATA/metadata/SPLIT)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=16)
    p.add_argument("--threshold", type=FRACTION, default=0.2, help="box threshold compared between engines")
    p.add_argument("--regressor", metavar="REG", help="the box regressor file the export was made with")
    p.add_argument("--interval", type=INTERVAL, default=0.01)
    p.add_argument("--limit", type=POSITIVE, default=None, help="only the first N images")
    p.add_argument("--json-out", "--results", dest="results", metavar="PATH",
                   help="also write the JSON result to this file (e.g. bench/results/...)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """`cream parity` with the parsed arguments; returns the exit status."""
    if args.results:
        check_output_file(args.results, "--results")
    from ..parity import compute_parity

    split_dir, images = split_paths(args.data, args.split, args.images, args.metadata)
    meta = read_split(split_dir)
    if args.limit:
        meta.image_ids = meta.image_ids[:args.limit]
    out = compute_parity(args.checkpoint, args.model, meta, images, args.batch_size, args.threshold, args.interval,
                         args.regressor, args.reference)
    if args.per_layer:
        out["per_layer"] = _per_layer(args, meta, images)
    out["command"] = args.command_line
    if args.results:
        write_json(args.results, out, "--results")
    if args.json:
        print_json(out)
    else:
        print_table([(k, v) for k, v in out.items() if not isinstance(v, (dict, list))], "reference vs exported")
        if args.per_layer:
            from ..export.layer_drift import format_drift

            print()
            print(format_drift(out["per_layer"]))
    return 0


def _per_layer(args: argparse.Namespace, meta, images: Path) -> dict:
    """The layer drift report of the int8 `--model` against `--reference` (or a temporary fp32
    export of `--checkpoint` with the model's mode and T), on the first --per-layer-images images."""
    from ..runtime import OnnxPredictor
    from ..scoring import split_batches

    try:
        from ..export.layer_drift import layer_drift
    except ImportError as exc:
        raise CreamError(f"--per-layer needs the onnx package (pip install 'cream-rt[export]'): {exc}") from None
    manifest = OnnxPredictor.load(args.model).manifest
    if manifest.precision != "int8":
        raise CreamError(f"{args.model}: --per-layer compares an int8 export with its fp32 source; this one is "
                         f"{manifest.precision}")
    meta.image_ids = meta.image_ids[:args.per_layer_images]
    feed = lambda: ((x, labels) for _, x, labels in split_batches(meta, images, args.batch_size, manifest.input_size,
                                                                   manifest.mean, manifest.std, "per-layer"))
    if args.reference:
        return layer_drift(args.reference, args.model, feed())
    from ..export.onnx_export import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        reference = str(Path(tmp) / "fp32.onnx")
        export_checkpoint(args.checkpoint, reference, manifest.mode, manifest.iterations)
        return layer_drift(reference, args.model, feed())
