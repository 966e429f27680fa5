"""`cream export`: checkpoint -> ONNX."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..argtypes import ITERATIONS, int_in, int_list
from .options import add_json, add_max_bad_images


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream export`'s arguments."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="ONNX file to write (optional with --triton-repo)")
    p.add_argument("--mode", choices=["cream", "cam"], default="cream")
    p.add_argument("--iterations", type=ITERATIONS, default=None, help="EM steps T (default: the checkpoint's)")
    p.add_argument("--opset", type=int_in(17, 20), default=20, help="ONNX opset, 17..20 (default 20)")
    p.add_argument("--external-data", action="store_true", help="weights in OUT.data beside the graph")
    p.add_argument("--regressor", metavar="REG", help="a `cream train-regressor` file: its boxes become the graph's "
                   "`boxes` output, used by localize, eval and parity")
    p.add_argument("--fused", action="store_true",
                   help="one cream::CosineEM custom node instead of the unrolled EM (for TensorRT's plugin)")
    p.add_argument("--trt", metavar="ENGINE", help="also build a TensorRT engine from the export (needs TensorRT)")
    p.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    p.add_argument("--batch-profile", type=int_list(1, 4096), default=(1, 8, 32), metavar="MIN,OPT,MAX",
                   help="TensorRT dynamic batch profile (default 1,8,32)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file, read and updated")
    p.add_argument("--int8", action="store_true",
                   help="ONNX Runtime: an int8 backbone (QDQ; the stem, classifier, CAM and EM stay fp32), "
                        "calibrated on --calibration-data")
    p.add_argument("--int8-calibration", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="how --int8 sets activation ranges from the calibration images (default minmax)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="--int8 without correcting each Conv's bias for the mean shift int8 puts on its output "
                        "(faster export; maps drift about 1.5x more)")
    p.add_argument("--calibration-data", metavar="DATA",
                   help="data root (images/, metadata/<split>/) whose images calibrate --int8")
    p.add_argument("--calibration-split", default="train", help="split of --calibration-data (default: train)")
    p.add_argument("--calibration-metadata", metavar="SPLIT_DIR",
                   help="instead of --calibration-data: a metadata split folder (image_ids.txt, ...)")
    p.add_argument("--calibration-image-root", metavar="DIR",
                   help="image root for the calibration ids (default DATA/images)")
    p.add_argument("--calibration-count", type=int_in(1, 100_000), default=256,
                   help="images to calibrate on (default 256)")
    add_max_bad_images(p)
    triton = p.add_argument_group("Triton Inference Server")
    triton.add_argument("--triton-repo", metavar="DIR",
                        help="write DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx for Triton's onnxruntime "
                             "backend (other models in DIR are left alone)")
    triton.add_argument("--model-name", help="the Triton model name (default: the checkpoint's file name)")
    triton.add_argument("--max-batch-size", type=int_in(1, 4096), default=32,
                        help="Triton max_batch_size; dynamic batching prefers 1/4, 1/2 and all of it (default 32)")
    add_json(p, "print the manifest as JSON")


def run(args: argparse.Namespace) -> int:
    """`cream export` with the parsed arguments; returns the exit status."""
    from ..atomic import check_output_file
    from ..errors import CreamError

    if not args.out and not args.triton_repo:
        raise CreamError("export: give --out FILE.onnx, --triton-repo DIR, or both")
    if args.out:
        check_output_file(args.out, "--out")
    if args.triton_repo:
        from ..export.triton_repo import check_repository, model_name_for

        args.model_name = args.model_name or model_name_for(args.checkpoint)
        check_repository(args.triton_repo, args.model_name)
        if args.fused or args.trt:
            raise CreamError("--triton-repo serves a standard-op export on Triton's onnxruntime backend; it does not "
                             "combine with --fused or --trt")
    if args.trt:
        check_output_file(args.trt, "--trt")
        from ..export.tensorrt_build import import_tensorrt

        import_tensorrt()  # fail before exporting when TensorRT is missing
        profile = args.batch_profile
        if len(profile) != 3 or not 1 <= profile[0] <= profile[1] <= profile[2]:
            raise CreamError(f"--batch-profile must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {profile}")

    if args.int8:
        if args.fused or args.trt or args.external_data:
            raise CreamError("--int8 quantizes a standard-op ONNX Runtime export; it does not combine with "
                             "--fused, --trt or --external-data")
        if not args.calibration_data and not (args.calibration_metadata and args.calibration_image_root):
            raise CreamError("--int8 needs --calibration-data DATA, or --calibration-metadata SPLIT_DIR with "
                             "--calibration-image-root DIR (images to calibrate the int8 ranges on)")
        if args.calibration_count < 1:
            raise CreamError(f"--calibration-count must be at least 1, got {args.calibration_count}")
    if args.no_bias_correction and not args.int8:
        raise CreamError("--no-bias-correction goes with --int8")
    if args.regressor and (args.int8 or args.fused):
        raise CreamError("--regressor goes with a standard fp32 export (not --int8 or --fused)")
    if args.out:
        return _export(args, args.out)
    with tempfile.TemporaryDirectory() as tmp:  # --triton-repo alone: the graph goes only there
        return _export(args, str(Path(tmp) / "model.onnx"))


def _export(args: argparse.Namespace, out: str) -> int:
    from ..export.onnx_export import export_checkpoint

    if args.int8:
        return _export_int8(args, out)
    manifest = export_checkpoint(args.checkpoint, out, args.mode, args.iterations, args.opset,
                                 args.external_data, args.fused, args.regressor)
    if args.triton_repo:
        _write_triton(args, out)
    if args.trt:
        from ..export.tensorrt_build import build_engine

        built = build_engine(out, args.trt, args.fp16, tuple(args.batch_profile), args.timing_cache)
        print(f"wrote TensorRT engine {built['engine']} (fp16={built['fp16']}, batch {built['batch_profile']})")
    if args.json:
        print(json.dumps(asdict(manifest), indent=2))
    elif args.out:
        print(f"wrote {out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, "
              f"input {manifest.input_size}x{manifest.input_size}, {len(manifest.class_names)} classes")
    return 0


def _write_triton(args: argparse.Namespace, onnx_path: str) -> None:
    from ..export.triton_repo import write_repository

    written = write_repository(onnx_path, args.triton_repo, args.model_name, args.max_batch_size)
    print(f"wrote Triton model {written['model']} in {written['repository']} (max_batch_size "
          f"{written['max_batch_size']}); serve it with: tritonserver --model-repository {written['repository']}",
          file=sys.stderr if args.json else sys.stdout)


def _export_int8(args: argparse.Namespace, out: str) -> int:
    """Export fp32 to a temporary file, then quantize its backbone into `out`."""
    from ..export.onnx_export import export_checkpoint
    from ..export.quantize import calibration_batches, quantize_export, split_images
    from ..metadata import split_paths
    from ..unreadable import UnreadableImages

    split_dir, image_root = split_paths(args.calibration_data, args.calibration_split, args.calibration_image_root,
                                        args.calibration_metadata)
    paths = split_images(split_dir, image_root, args.calibration_count)
    unreadable = UnreadableImages(args.max_bad_images)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = str(Path(tmp) / "fp32.onnx")
        manifest = export_checkpoint(args.checkpoint, fp32, args.mode, args.iterations, args.opset)
        report = quantize_export(fp32, out, calibration_batches(paths, manifest.input_size, manifest.mean,
                                                                     manifest.std, unreadable=unreadable),
                                 args.int8_calibration, bias_correction=not args.no_bias_correction)
    report["unreadable_images"] = unreadable.record()
    unreadable.warn("export --int8")
    if args.triton_repo:
        _write_triton(args, out)
    if args.json:
        print(json.dumps({**asdict(manifest), "precision": "int8", "quantization": report}, indent=2))
    elif args.out:
        print(f"wrote {out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, int8 backbone "
              f"({report['quantized_convs']} convolutions; {report['fp32_convs']} stay fp32) calibrated on "
              f"{report['calibration_images']} images ({report['calibration']}"
              f"{', biases corrected' if report['bias_correction'] else ''})")
    return 0
