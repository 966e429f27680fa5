"""The `cream` command line: one entry point, one subcommand per job. Heavy imports (torch,
onnx) happen inside the subcommands that need them, so `cream localize` and `cream eval
--maps` run on a torch-free install."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from . import __version__
from .argtypes import (
    BATCH_SIZE,
    EPOCHS,
    FRACTION,
    INPUT_SIZE,
    INTERVAL,
    ITERATIONS,
    NON_NEGATIVE,
    POSITIVE,
    THREADS,
    float_in,
    int_in,
    int_list,
    name_list,
)
from .errors import CreamError, Terminated, os_error_line

# TrainConfig.refine_rounds, repeated here so that the CLI imports no torch
# (tests/test_model_cli.py checks that they agree)
REFINE_ROUNDS_DEFAULT = 1

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str, target: str):
    """Register a subcommand: `target` is 'module:function' imported only when it runs."""
    def decorate(add_args: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (help_text, add_args, target)
        return add_args
    return decorate


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=THREADS, default=None,
                        help="threads scoring the maps (default: up to 4, one per core)")


@command("eval", "evaluate score maps, a checkpoint or an exported model (wsolevaluation protocol)",
         "cream_rt.commands.eval_cmd:run")
def _eval_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument("--maps", help="folder of <image_id>.npy score maps (wsolevaluation layout)")
    src.add_argument("--checkpoint", help="a cream training checkpoint (.pt)")
    src.add_argument("--model", help="an exported ONNX model (runs on ONNX Runtime, no torch)")
    p.add_argument("--metadata", help="metadata split folder (image_ids.txt, class_labels.txt, ...)")
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _threads(p)


@command("synth", "generate the synthetic WSOL benchmark (images, masks, metadata)",
         "cream_rt.commands.synth_cmd:run")
def _synth_args(p: argparse.ArgumentParser) -> None:
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


@command("backbones", "list the registered backbones", "cream_rt.commands.backbones_cmd:run")
def _backbones_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", metavar="NAME", help="list this backbone's layers (channels, cells at its input size): "
                                                    "the names `--em-layer` takes")
    p.add_argument("--json", action="store_true")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data root: images/ and metadata/<split>/ (wsolevaluation layout)")
    p.add_argument("--images", help="image root (instead of DATA/images)")
    p.add_argument("--metadata", help="metadata root with train/ val/ test/ (instead of DATA/metadata)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


@command("train", "train a CAM model with CREAM context-embedding learning",
         "cream_rt.commands.train_cmd:run")
def _train_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.add_argument("--backbone", default="small-cnn", help="see `cream backbones`")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--epochs", type=EPOCHS, default=6)
    p.add_argument("--lr", type=float_in(0.0, 10.0, low_open=True), default=0.01,
                   help="learning rate of pretrained layers (new: 10x)")
    p.add_argument("--lr-decay-epochs", type=POSITIVE, nargs="*", default=[4], help="epochs where lr drops 10x")
    p.add_argument("--weight-decay", type=float_in(0.0, 1.0), default=1e-4)
    p.add_argument("--bn-batches", type=NON_NEGATIVE, default=40,
                   help="training batches that re-estimate BatchNorm statistics after each epoch (0: off)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=None,
                   help="default: the backbone's (small-cnn 96, others 224)")
    p.add_argument("--large-feature-map", action="store_true")
    p.add_argument("--tap", action="store_true", help="RCAM thresholded average pooling")
    p.add_argument("--nwc", action="store_true", help="RCAM negative weight clamping")
    p.add_argument("--pas", action="store_true",
                   help="RCAM percentile as a standard: boxes at 0.35 of each map's 90th percentile (kept in exports)")
    p.add_argument("--iterations", type=ITERATIONS, default=2, help="CREAM EM steps T")
    p.add_argument("--beta", type=float_in(0.0, 1000.0, low_open=True), default=8.0)
    p.add_argument("--tau", type=FRACTION, default=0.2)
    p.add_argument("--momentum", type=float_in(0.0, 1.0, high_open=True), default=0.8,
                   help="lambda of the embedding update, in [0, 1)")
    p.add_argument("--feature-mean", choices=["raw", "unit"], default="unit",
                   help="embeddings and EM M-step average L2-normalised features (unit, default) or raw ones")
    p.add_argument("--border", type=int_in(0, 8), default=0,
                   help="deviation: rings of border feature cells left out of the M-step and calibration (default 0)")
    p.add_argument("--calibration", choices=["omega", "cam-mean", "none"], default="cam-mean",
                   help="which EM component is the foreground: 'cam-mean' (default) the one with the higher "
                        "responsibility-weighted mean CAM, 'omega' the paper's rule (larger mean responsibility "
                        "where CAM >= tau), 'none' the one started from the foreground embedding")
    p.add_argument("--upsample", type=int_in(1, 8), default=1,
                   help="deviation: run the EM on features upsampled by this factor (default 1)")
    p.add_argument("--adapt-fg", type=float_in(0.0, 1.0), default=0.0,
                   help="deviation: start the EM's foreground centroid from (1-a) * embedding + a * the image's mean "
                        "feature where minmax(CAM) >= tau (default 0)")
    p.add_argument("--adapt-bg", type=float_in(0.0, 1.0), default=0.0,
                   help="deviation: the same for the background centroid, over the rest of the image (default 0)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help="the EM clusters features minus the training split's mean feature, set by the embedding "
                        "pass (default: the backbone's, `cream backbones --json`: on for ResNet50, VGG16, "
                        "InceptionV3; off for small-cnn and EfficientNet-Lite0)")
    p.add_argument("--em-layer", default=None, metavar="LAYER",
                   help="the layer whose features the EM clusters: 'cam' (the CAM's own) or an earlier layer at the "
                        "same resolution (`cream backbones --layers NAME`; default: the backbone's, "
                        "`cream backbones --json`)")
    p.add_argument("--embedding-pass", action=argparse.BooleanOptionalAction, default=True,
                   help="after the last epoch, set the embeddings from one pass over the training split with the "
                        "final weights: feature center, class means under the CAM's mask, --refine rounds "
                        "(--no-embedding-pass: the momentum averages of training, the paper's rule)")
    p.add_argument("--refine", type=int_in(0, 100), default=REFINE_ROUNDS_DEFAULT,
                   help="refinement rounds of the embedding pass, the EM's calibrated responsibilities as soft "
                        f"masks (default {REFINE_ROUNDS_DEFAULT})")
    p.add_argument("--pretrained", help="ImageNet weights file or URL (default: the usual source)")
    p.add_argument("--resume", help="checkpoint to resume from")
    p.add_argument("--workers", type=int_in(0, 256), default=0, help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")


@command("fit-embeddings", "learn CREAM's context embeddings of a trained CAM model (frozen)",
         "cream_rt.commands.fit_cmd:run")
def _fit_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=EPOCHS, default=1)
    p.add_argument("--momentum", type=float_in(0.0, 1.0, high_open=True), default=None,
                   help="lambda in [0, 1) (default: the checkpoint's)")
    p.add_argument("--feature-mean", choices=["raw", "unit"], default=None,
                   help="raw or L2-normalised feature means, for the embeddings and the EM (default: the checkpoint's)")
    p.add_argument("--refine", type=int_in(0, 100), default=None,
                   help="with --estimate pass: refinement rounds after the class means "
                        f"(default {REFINE_ROUNDS_DEFAULT}); "
                        "with momentum, instead of a fresh fit: refine the checkpoint's embeddings for R rounds, the "
                        "EM's calibrated responsibilities as soft masks over the train split (default 0: off)")
    p.add_argument("--estimate", choices=["pass", "momentum"], default="pass",
                   help="pass: the embedding pass `cream train` ends with (feature center, class means under the "
                        "CAM's mask, --refine rounds; eval transform); momentum: the paper's momentum rule over "
                        "augmented images for --epochs (default pass)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help="with --estimate pass: subtract the split's mean feature before the EM (default: the "
                        "checkpoint's setting; with --em-layer naming the backbone's default layer, the backbone's)")
    p.add_argument("--em-layer", default=None, metavar="LAYER",
                   help="the layer whose features the EM clusters, 'cam' or an earlier layer (`cream backbones "
                        "--layers NAME`); another than the checkpoint's estimates new embeddings (default: the "
                        "checkpoint's)")
    p.add_argument("--json", action="store_true")


@command("import", "turn a wsolevaluation or torchvision checkpoint into a cream checkpoint (CAM; then fit-embeddings)",
         "cream_rt.commands.import_cmd:run")
def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the checkpoint file (wsolevaluation's *_checkpoint.pth.tar, a torchvision .pth)")
    p.add_argument("--from", dest="source", choices=["wsolevaluation", "torchvision"], required=True)
    p.add_argument("--arch", required=True,
                   help="vgg16, resnet50 or inceptionv3 (wsolevaluation); resnet50 or inception_v3 (torchvision)")
    p.add_argument("--classes", type=int_in(1, 100_000), default=None,
                   help="expected number of classes (default: the checkpoint's classifier)")
    p.add_argument("--large-feature-map", action="store_true", help="trained with wsolevaluation's --large_feature_map")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    p.add_argument("--out", required=True, help="cream checkpoint to write (.pt)")
    p.add_argument("--json", action="store_true")


@command("train-regressor", "CREAM + box regressor: train a class-agnostic regressor on CREAM's pseudo boxes",
         "cream_rt.commands.regressor_cmd:run")
def _regressor_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.add_argument("--checkpoint", required=True, help="the CREAM checkpoint whose maps give the pseudo boxes")
    p.add_argument("--out", required=True, help="regressor file to write (.pt)")
    p.add_argument("--epochs", type=EPOCHS, default=6)
    p.add_argument("--lr", type=float_in(0.0, 10.0, low_open=True), default=0.01,
                   help="learning rate of the backbone (the head: 10x)")
    p.add_argument("--threshold", type=FRACTION, default=None,
                   help="map threshold of the pseudo boxes (default: the best MaxBoxAcc threshold on the val split)")
    p.add_argument("--json", action="store_true")


@command("demo", "synthesize data, train a small CREAM model, compare CAM vs CREAM, write overlays",
         "cream_rt.commands.demo:run")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--epochs", type=EPOCHS, default=6)
    p.add_argument("--train", type=int_in(16, 10_000_000), default=3000, help="training images")
    p.add_argument("--body-tint", type=float_in(0.0, 1.0), default=0.0,
                   help="synthetic body class tint (see `cream synth`)")
    p.add_argument("--decoys", type=int_in(0, 16), default=2,
                   help="synthetic decoy heads per image (see `cream synth`)")
    p.add_argument("--feature-mean", choices=["raw", "unit"], default="unit",
                   help="CREAM's embeddings and M-step average L2-normalised (unit, default) or raw features")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--json", action="store_true")


@command("export", "export a checkpoint to one ONNX graph (EM unrolled, embeddings embedded)",
         "cream_rt.commands.export_cmd:run")
def _export_args(p: argparse.ArgumentParser) -> None:
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
    triton = p.add_argument_group("Triton Inference Server")
    triton.add_argument("--triton-repo", metavar="DIR",
                        help="write DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx for Triton's onnxruntime "
                             "backend (other models in DIR are left alone)")
    triton.add_argument("--model-name", help="the Triton model name (default: the checkpoint's file name)")
    triton.add_argument("--max-batch-size", type=int_in(1, 4096), default=32,
                        help="Triton max_batch_size; dynamic batching prefers 1/4, 1/2 and all of it (default 32)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


@command("localize", "localize images with an exported model (ONNX Runtime, no torch)",
         "cream_rt.commands.localize_cmd:run")
def _localize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders, text files of paths, or metadata split folders")
    p.add_argument("--model", required=True, help="exported ONNX model")
    p.add_argument("--out", required=True, help="results file (.jsonl, or .json with --format coco)")
    p.add_argument("--images", help="image root for metadata split inputs")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=8)
    p.add_argument("--threshold", default=None,
                   help="box threshold as a fraction of the map's max (default 0.2; with a PaS model of its 90th "
                        "percentile, default 0.35), or a `cream eval --json` output file whose best threshold "
                        "(MaxBoxAcc_threshold) to use")
    p.add_argument("--all-contours", action="store_true", help="one box per contour (default: largest)")
    p.add_argument("--format", choices=["jsonl", "coco"], default="jsonl")
    p.add_argument("--save-maps", help="write <name>.npy score maps here")
    p.add_argument("--overlays", help="write overlay PNGs here")
    p.add_argument("--providers", help="comma-separated ONNX Runtime providers")
    p.add_argument("--reduced-decode", action="store_true",
                   help="decode JPEGs at least 2x the model's input size at 1/2, 1/4 or 1/8 scale (libjpeg's DCT "
                        "scaling): faster on large photos, maps slightly different from a full decode")
    ray = p.add_argument_group("Ray Data (pip install 'cream-rt[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="run on Ray Data: --out is a folder of result shards plus manifest.json; a re-run on the "
                          "same folder skips the inputs already written")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="a running Ray cluster (HOST:PORT of `ray start --head`, or auto); default: a local Ray")
    ray.add_argument("--actors", type=int_in(1, 4096), default=None,
                     help="ONNX Runtime actors, one session each (default 2)")
    ray.add_argument("--actor-threads", type=int_in(1, 256), default=None,
                     help="intra-op threads per actor (default 1)")
    ray.add_argument("--shard-format", choices=["jsonl", "parquet"], default=None,
                     help="result shards as JSON lines (default) or Parquet")
    ray.add_argument("--json", action="store_true", help="print the run's summary as JSON (with --ray)")


@command("parity", "compare the eager model (or an fp32 export) and an export on the same images",
         "cream_rt.commands.parity_cmd:run")
def _parity_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--metadata", help="metadata split folder (instead of DATA/metadata/SPLIT)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=16)
    p.add_argument("--threshold", type=FRACTION, default=0.2, help="box threshold compared between engines")
    p.add_argument("--regressor", metavar="REG", help="the box regressor file the export was made with")
    p.add_argument("--interval", type=INTERVAL, default=0.01)
    p.add_argument("--limit", type=POSITIVE, default=None, help="only the first N images")
    p.add_argument("--json-out", "--results", dest="results", metavar="PATH",
                   help="also write the JSON result to this file (e.g. bench/results/...)")
    p.add_argument("--json", action="store_true")


@command("bench", "latency per image and throughput of every engine side by side",
         "cream_rt.commands.bench_cmd:run")
def _bench_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a cream checkpoint")
    src.add_argument("--backbone", help="an untrained model of this backbone (timing only)")
    p.add_argument("--classes", type=int_in(1, 100_000), default=200,
                   help="classes of the --backbone model (default 200)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=None, help="input size of the --backbone model")
    p.add_argument("--model", help="an exported ONNX model to time for its mode and T (others are exported)")
    p.add_argument("--engines", type=name_list, default=("eager", "onnxruntime"),
                   help="comma-separated: eager, eager-fused (CREAM's EM in the C++/CUDA op), "
                        "eager-channels-last, torch-compile, onnxruntime, onnxruntime-int8 (int8 convolutions, "
                        "calibrated on synthetic images: timing only), tensorrt, grad-cam, torchcam "
                        "(default eager,onnxruntime)")
    p.add_argument("--batch-sizes", type=int_list(1, 4096), default=(1, 8))
    p.add_argument("--modes", type=name_list, default=("cam", "cream"))
    p.add_argument("--iterations", type=int_list(1, 32), default=(2,), help="CREAM T values (default 2)")
    p.add_argument("--budget", type=float_in(0.0, 3600.0, low_open=True), default=2.0,
                   help="seconds of timed runs per measurement")
    p.add_argument("--no-pipeline", action="store_true", help="skip the Localizer pipeline breakdown")
    p.add_argument("--threads", type=THREADS, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the eager and ONNX Runtime engines run; tensorrt needs cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    p.add_argument("--json-out", metavar="PATH", help="write the results JSON to this file")
    p.add_argument("--plot", help="write a PNG of latency per image against batch size")


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one `cream: error: ...` line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        self.exit(2, f"cream: error: {sub + ': ' if sub else ''}{message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered above by `@command`."""
    parser = Parser(prog="cream", description="CAM / CREAM weakly supervised object localization: train, "
                    "export, localize, evaluate and benchmark.")
    parser.add_argument("--version", action="version", version=f"cream-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, add_args, target) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_target=target)
    return parser


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (DataLoader workers and some libraries
    wrap the original error in a traceback)."""
    import re

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])[:300] if len(lines) > 1 else lines[0][:300]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. A user error prints one line `cream: error: ...` and exits with status 2;
    SIGINT exits 130 and SIGTERM 143, after the temporary outputs are removed."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "cream " + " ".join(argv)  # recorded in results files
    if not getattr(args, "_target", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if _main_thread() else None
    module_name, func_name = args._target.split(":")
    try:
        import importlib

        handler: Handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except CreamError as exc:
        _error(_one_line(exc))
    except OSError as exc:  # a path the command could not read or write
        _error(os_error_line(exc))
    except MemoryError:
        _error("out of memory (a smaller --batch-size, or smaller images, may fit)")
    except KeyboardInterrupt:
        print("cream: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("cream: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # a bug or a case not handled above: still one line, the trace on request
        if os.environ.get("CREAM_DEBUG"):
            raise
        _error(f"unexpected {exc.__class__.__name__}: {_one_line(exc)} (CREAM_DEBUG=1 prints the traceback)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 2


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _error(line: str) -> None:
    print(f"cream: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
