"""The paper's ablations on the synthetic benchmark: MaxBoxAccV2 / GT-known by T (0..4) and by
lambda (0.2, 0.8, 1.0; embeddings re-learned with `fit-embeddings`, classifier frozen; with
lambda = 1 they stay random). Writes one JSON.
`python -m cream_rt.bench.ablation --checkpoint demo_out/small-cnn.pt --data demo_out/synth \
--out bench/results/ablation_synthetic.json`"""
from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

from cream_rt.atomic import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.2, 0.8, 1.0])
    parser.add_argument("--feature-mean", choices=["raw", "unit"], default=None,
                        help="for the lambda refits (default: the checkpoint's)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cream_rt.bench.machine import machine_info
    from cream_rt.metadata import read_split, split_paths
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.train.trainer import evaluate_split, fit_embeddings

    split_dir, images = split_paths(args.data, args.split)
    meta = read_split(split_dir)
    keys = ("MaxBoxAccV2", "GT_known_Loc", "Top1_Loc")
    result = {"checkpoint": args.checkpoint, "split": args.split, "by_T": {}, "by_lambda": {},
              "machine": machine_info(), "date": date.today().isoformat(),
              "command": " ".join(["python -m cream_rt.bench.ablation"] + (sys.argv[1:] if argv is None else argv))}
    model, _ = load_checkpoint(args.checkpoint)
    result["feature_mean"] = args.feature_mean or model.config.cream.feature_mean
    metrics = evaluate_split(model, meta, images, {f"T={t}": ("cream", t) for t in range(5)}, 64)
    result["by_T"] = {name: {k: m[k] for k in keys} for name, m in metrics.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for lam in args.lambdas:
            path = str(Path(tmp) / f"lam{lam}.pt")
            fit_embeddings(args.checkpoint, args.data, path, momentum=lam, feature_mean=args.feature_mean,
                           estimate="momentum")
            refit, _ = load_checkpoint(path)
            m = evaluate_split(refit, meta, images, {"T=2": ("cream", 2)}, 64)["T=2"]
            result["by_lambda"][str(lam)] = {k: m[k] for k in keys}
    write_json(args.out, result)
    print("T:", {k: round(v["MaxBoxAccV2"], 2) for k, v in result["by_T"].items()})
    print("lambda (T=2):", {k: round(v["MaxBoxAccV2"], 2) for k, v in result["by_lambda"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
