"""`cream export`: checkpoint -> ONNX."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_file
    from ..errors import CreamError
    from ..export.onnx_export import export_checkpoint

    check_output_file(args.out, "--out")
    if args.trt:
        check_output_file(args.trt, "--trt")
    if args.trt:
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
        return _export_int8(args)
    if args.regressor and (args.int8 or args.fused):
        raise CreamError("--regressor goes with a standard fp32 export (not --int8 or --fused)")
    manifest = export_checkpoint(args.checkpoint, args.out, args.mode, args.iterations, args.opset,
                                 args.external_data, args.fused, args.regressor)
    if args.trt:
        from ..export.tensorrt_build import build_engine

        built = build_engine(args.out, args.trt, args.fp16, tuple(args.batch_profile), args.timing_cache)
        print(f"wrote TensorRT engine {built['engine']} (fp16={built['fp16']}, batch {built['batch_profile']})")
    if args.json:
        print(json.dumps(asdict(manifest), indent=2))
    else:
        print(f"wrote {args.out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, "
              f"input {manifest.input_size}x{manifest.input_size}, {len(manifest.class_names)} classes")
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    """Export fp32 to a temporary file, then quantize its convolutions into `--out`."""
    import tempfile
    from pathlib import Path

    from ..export.onnx_export import export_checkpoint
    from ..export.quantize import calibration_batches, quantize_export, split_images
    from ..metadata import split_paths

    split_dir, image_root = split_paths(args.calibration_data, args.calibration_split, args.calibration_image_root,
                                        args.calibration_metadata)
    paths = split_images(split_dir, image_root, args.calibration_count)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = str(Path(tmp) / "fp32.onnx")
        manifest = export_checkpoint(args.checkpoint, fp32, args.mode, args.iterations, args.opset)
        report = quantize_export(fp32, args.out, calibration_batches(paths, manifest.input_size, manifest.mean,
                                                                     manifest.std))
    if args.json:
        manifest.precision = "int8"
        print(json.dumps({**asdict(manifest), "quantization": report}, indent=2))
    else:
        print(f"wrote {args.out}: {manifest.backbone}, mode {manifest.mode}, T={manifest.iterations}, int8 "
              f"convolutions ({report['quantized_convs']}) calibrated on {report['calibration_images']} images")
    return 0
