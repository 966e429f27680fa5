"""`cream export`: checkpoint -> ONNX."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path


def run(args: argparse.Namespace) -> int:
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

    split_dir, image_root = split_paths(args.calibration_data, args.calibration_split, args.calibration_image_root,
                                        args.calibration_metadata)
    paths = split_images(split_dir, image_root, args.calibration_count)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = str(Path(tmp) / "fp32.onnx")
        manifest = export_checkpoint(args.checkpoint, fp32, args.mode, args.iterations, args.opset)
        report = quantize_export(fp32, out, calibration_batches(paths, manifest.input_size, manifest.mean,
                                                                     manifest.std), args.int8_calibration,
                                 bias_correction=not args.no_bias_correction)
    if args.triton_repo:
        _write_triton(args, out)
    if args.json:
        manifest.precision = "int8"
        print(json.dumps({**asdict(manifest), "quantization": report}, indent=2))
    elif args.out:
        print(f"wrote {out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, int8 backbone "
              f"({report['quantized_convs']} convolutions; {report['fp32_convs']} stay fp32) calibrated on "
              f"{report['calibration_images']} images ({report['calibration']}"
              f"{', biases corrected' if report['bias_correction'] else ''})")
    return 0
