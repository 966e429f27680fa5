"""`cream eval`: wsolevaluation metrics of score maps, a checkpoint (eager torch) or an
exported model (ONNX Runtime, no torch)."""
from __future__ import annotations

import argparse
import contextlib

from ..argtypes import BATCH_SIZE, INPUT_SIZE, INTERVAL, ITERATIONS, THREADS
from ..atomic import atomic_dir, check_output_dir
from ..errors import CreamError
from ..metadata import SplitMetadata, read_split, split_folder, split_paths
from ..scoring import SplitScorer, check_labels, split_batches
from ..session import Predictor
from ..unreadable import UnreadableImages
from .options import add_json, add_max_bad_images
from .output import print_json, print_table


def report(result: dict, as_json: bool, title: str) -> None:
    """Print metrics as JSON or as a readable table."""
    if as_json:
        print_json(result)
        return
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += [(f"{key}[{k}]", v) for k, v in value.items()]
        elif isinstance(value, list):
            if value:
                rows.append((key, ", ".join(map(str, value))))
        else:
            rows.append((key, value))
    print_table(rows, title)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream eval`'s arguments."""
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument("--maps", help="folder of <image_id>.npy score maps (wsolevaluation layout)")
    src.add_argument("--checkpoint", help="a cream training checkpoint (.pt)")
    src.add_argument("--model", help="an exported ONNX model (runs on ONNX Runtime, no torch)")
    p.add_argument("--metadata", help="metadata split folder (image_ids.txt, class_labels.txt, ...), or a metadata "
                                      "root with SPLIT/ in it")
    p.add_argument("--data", help="data root with images/ and metadata/<split>/ (with --checkpoint/--model)")
    p.add_argument("--images", help="image root, if not DATA/images")
    p.add_argument("--split", default="test", help="split name under DATA/metadata (default: test)")
    p.add_argument("--mask-root", help="root of the mask PNGs (OpenImages-style splits)")
    p.add_argument("--interval", type=INTERVAL, default=0.01, help="score-threshold step (default 0.01)")
    p.add_argument("--allow-missing", action="store_true", help="count a missing map as a miss")
    p.add_argument("--map-size", type=INPUT_SIZE, nargs=2, default=(224, 224), metavar=("H", "W"),
                   help="score-map size; GT boxes are scaled to it (default 224 224)")
    p.add_argument("--mode", choices=["cam", "cream"], default="cream", help="map type for --checkpoint")
    p.add_argument("--iterations", type=ITERATIONS, default=None,
                   help="EM steps T for --checkpoint (default: checkpoint's)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=16)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--save-maps", help="write the score maps as <image_id>.npy under this folder")
    p.add_argument("--regressor", metavar="REG",
                   help="with --checkpoint: also score this box regressor's boxes (`regressor` in the output)")
    p.add_argument("--pas", action=argparse.BooleanOptionalAction, default=None,
                   help="RCAM's percentile as a standard: box thresholds relative to each map's 90th percentile "
                        "(default: the model's setting; off for --maps)")
    add_json(p, "print one JSON object")
    p.add_argument("--threads", type=THREADS, default=None, help="threads scoring the maps (default: up to 4)")
    add_max_bad_images(p)


def run(args: argparse.Namespace) -> int:
    """`cream eval` with the parsed arguments; returns the exit status."""
    sources = [s for s in (args.maps, args.checkpoint, args.model) if s]
    if len(sources) != 1:
        raise CreamError("pass exactly one of --maps, --checkpoint, --model")
    if args.maps:
        from ..evaluate import evaluate_map_folder

        split_dir = split_folder(args.metadata, args.split) if args.metadata else split_paths(args.data, args.split)[0]
        result = evaluate_map_folder(args.maps, read_split(split_dir), args.interval, args.mask_root,
                                     args.allow_missing, tuple(args.map_size), args.threads, bool(args.pas))
        report(result, args.json, f"wsolevaluation metrics of {args.maps}")
        return 0
    split_dir, images = split_paths(args.data, args.split, args.images, args.metadata)
    report(evaluate_model(args, read_split(split_dir), images), args.json, "wsolevaluation metrics")
    return 0


def evaluate_model(args: argparse.Namespace, meta: SplitMetadata, images) -> dict:
    """`--checkpoint` (eager torch) or `--model` (ONNX Runtime) over the split, streamed; an
    unreadable image is skipped, reported and scored as a miss (`--max-bad-images`)."""
    if args.save_maps:
        check_output_dir(args.save_maps, "--save-maps")
    if args.regressor and not args.checkpoint:
        raise CreamError("--regressor goes with --checkpoint (an export carries its regressor inside)")
    predictor: Predictor
    if args.model:
        from ..session import OnnxPredictor

        onnx = OnnxPredictor.load(args.model)
        num_classes, pas, predictor = len(onnx.manifest.class_names), onnx.manifest.pas, onnx
    else:
        from ..model.device import torch_device
        from ..model.eager import EagerPredictor

        eager = EagerPredictor.from_checkpoint(args.checkpoint, args.mode, args.iterations,
                                               str(torch_device(args.device)), args.regressor)
        num_classes, pas, predictor = eager.model.config.num_classes, eager.model.config.pas, eager
    if args.pas is not None:
        pas = args.pas
    check_labels(meta, num_classes, args.model or args.checkpoint)
    with contextlib.ExitStack() as stack:
        maps_dir = stack.enter_context(atomic_dir(args.save_maps, "--save-maps")) if args.save_maps else None
        scorer = SplitScorer(meta, predictor.input_size, args.interval, maps_dir, pas)
        box_scorer = SplitScorer(meta, predictor.input_size, args.interval)
        unreadable = UnreadableImages(args.max_bad_images)
        for chunk, x, labels in split_batches(meta, images, args.batch_size, predictor.input_size, predictor.mean,
                                              predictor.std, "eval", unreadable, (scorer, box_scorer)):
            logits, maps, boxes = predictor.run(x, labels)
            scorer.add(chunk, logits, maps)
            if boxes is not None:
                box_scorer.add_boxes(chunk, logits, boxes)
        out = scorer.result()
        if box_scorer.boxes_only:
            out["regressor"] = box_scorer.result()
    out["unreadable_images"] = unreadable.record()
    unreadable.warn("eval")
    out.update(predictor.describe())
    return out
