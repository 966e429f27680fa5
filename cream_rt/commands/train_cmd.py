"""`cream train`: train a CAM model with CREAM's context-embedding learning."""
from __future__ import annotations

import argparse
import os

from ..argtypes import EPOCHS, FRACTION, INPUT_SIZE, ITERATIONS, NON_NEGATIVE, POSITIVE, float_in, int_in
from ..config import REFINE_ROUNDS
from .options import add_data, add_embedding_options, add_json, add_max_bad_images
from .output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`cream train`'s arguments."""
    add_data(p)
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
    p.add_argument("--iterations", type=ITERATIONS, default=None,
                   help="CREAM EM steps T (default: the backbone's, `cream backbones --json`: 1 for "
                        "EfficientNet-Lite0, 2 elsewhere)")
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
                        "InceptionV3 and EfficientNet-Lite0; off for small-cnn)")
    p.add_argument("--em-layer", default=None, metavar="LAYER",
                   help="the layer whose features the EM clusters: 'cam' (the CAM's own), an earlier layer on the "
                        "CAM's grid or one stride-2 step finer, or a place such as stage6.first (`cream backbones "
                        "--layers NAME`; default: the backbone's, `cream backbones --json`)")
    p.add_argument("--embedding-pass", action=argparse.BooleanOptionalAction, default=True,
                   help="after the last epoch, set the embeddings from one pass over the training split with the "
                        "final weights: feature center, class means under the CAM's mask, --refine rounds "
                        "(--no-embedding-pass: the momentum averages of training, the paper's rule)")
    p.add_argument("--refine", type=int_in(0, 100), default=REFINE_ROUNDS,
                   help="refinement rounds of the embedding pass, the EM's calibrated responsibilities as soft "
                        f"masks (default {REFINE_ROUNDS})")
    p.add_argument("--pretrained", help="ImageNet weights file or URL (default: the usual source)")
    p.add_argument("--resume", help="checkpoint to resume from")
    p.add_argument("--workers", type=int_in(0, 256), default=0, help="data-loading processes")
    add_embedding_options(p, "per-class / class-mean")
    add_max_bad_images(p)
    add_json(p, "print the training record as JSON")


def run(args: argparse.Namespace) -> int:
    """`cream train` with the parsed arguments; returns the exit status."""
    from ..atomic import check_output_file
    from ..config import CreamConfig
    from ..model.device import torch_device
    from ..train.trainer import TrainConfig
    from ..train.trainer import train as run_train

    args.ends_process = os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")  # a torchrun worker
    check_output_file(args.out, "--out")
    torch_device(args.device)

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         lr_decay_epochs=tuple(args.lr_decay_epochs), weight_decay=args.weight_decay,
                         seed=args.seed, device=args.device, workers=args.workers, pretrained=args.pretrained,
                         bn_batches=args.bn_batches, embedding_pass=args.embedding_pass, refine_rounds=args.refine,
                         max_bad_images=args.max_bad_images)
    from ..errors import CreamError

    try:
        cream = CreamConfig(iterations=args.iterations, beta=args.beta, tau=args.tau, momentum=args.momentum,
                            feature_mean=args.feature_mean, border=args.border, calibration=args.calibration,
                            upsample=args.upsample, adapt_fg=args.adapt_fg, adapt_bg=args.adapt_bg,
                            center=args.center, em_layer=args.em_layer,
                            **{k: v for k, v in (("embeddings", args.embeddings), ("fallback", args.fallback))
                               if v is not None})
    except ValueError as exc:
        raise CreamError(str(exc)) from None
    record = run_train(args.backbone, args.data, args.out, config=config, images=args.images, metadata=args.metadata,
                       resume=args.resume, cream=cream, input_size=args.input_size,
                       large_feature_map=args.large_feature_map, tap=args.tap, nwc=args.nwc, pas=args.pas)
    if args.json and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 speaks for the job
        print_json(record)
    return 0
