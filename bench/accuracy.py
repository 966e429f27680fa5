"""The accuracy suite: where does CREAM's re-activation beat CAM? For every cell (synthetic preset x
backbone x seed) it synthesizes a small data set, trains the CAM model with CREAM's embedding
learning (default settings), and scores on the test split, from one backbone pass per batch:
CAM, CREAM T=1..3 (default: unit means), CREAM with raw means (embeddings refitted with raw
means), the oracle-centroid EM (per-image centroids from the ground-truth mask: the ceiling of any
learned embedding), and one row per named deviation (ablation). Per row: MaxBoxAccV2, GT-known
Loc, the mean map inside / outside the object at feature resolution, and the calibration flips.
EfficientNet-Lite0 cells also score the int8 export next to the fp32 one (ONNX Runtime).
The cells are trained without the embedding pass (their `CREAM T=*` rows use the momentum
embeddings, as before 2026-12-05); `bench/embedding_estimates.py` scores the pass on the same cells.
Writes one JSON (every cell) and one Markdown table (means over seeds). A benchmark, not a test.

`python -m cream_rt.bench.accuracy --suite default --seeds 0,1,2 --backbones small-cnn,efficientnet-lite0 \\
    --out bench/results/accuracy_suite.json`"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import cv2
import numpy as np

SUITES: dict[str, tuple[str, ...]] = {
    "default": ("default", "no-decoys", "tinted", "small", "clutter", "photo"),
    "quick": ("default", "tinted"),
}


@dataclass(frozen=True)
class CellRecipe:
    """How one backbone is trained in a cell: image side, input size, epochs, data sizes."""

    image_size: int
    input_size: int
    epochs: int
    lr_decay_epochs: tuple[int, ...]
    train: int = 1500
    val: int = 150
    test: int = 300


RECIPES = {
    "small-cnn": CellRecipe(image_size=96, input_size=96, epochs=6, lr_decay_epochs=(4,)),
    "efficientnet-lite0": CellRecipe(image_size=160, input_size=160, epochs=2, lr_decay_epochs=(1,), train=1200),
    # ImageNet weights from torchvision's cache (not downloadable on the development machines);
    # about 10x Lite0's training time per cell on 2 cores
    "resnet50": CellRecipe(image_size=160, input_size=160, epochs=2, lr_decay_epochs=(1,), train=1200),
}


@dataclass(frozen=True)
class Variant:
    """One row: how the map is made from the features."""

    iterations: int
    centroids: str = "learned"  # learned | raw (refitted with raw means) | refined (`refine` rounds) | oracle
    config: dict = field(default_factory=dict)  # CreamConfig fields that differ from the checkpoint's
    pas: bool = False  # boxes scored with RCAM's percentile as a standard
    refine: int = 0  # centroids "refined": rounds of `cream fit-embeddings --refine`


def variants() -> dict[str, Variant]:
    """The rows of the suite: the method, its references and the ablations."""
    rows = {"CAM": Variant(0)}
    rows.update({f"CREAM T={t}": Variant(t) for t in (1, 2, 3)})
    rows["CREAM raw T=2"] = Variant(2, centroids="raw", config={"feature_mean": "raw"})
    # the oracle knows which component is the object: no calibration (it would flip it wrongly)
    rows["oracle EM T=1"] = Variant(1, centroids="oracle", config={"calibration": "none"})
    rows["oracle EM T=2"] = Variant(2, centroids="oracle", config={"calibration": "none"})
    rows.update({f"{name}={value:g}": Variant(2, config={name: value})
                 for name, value in (("beta", 4.0), ("beta", 16.0), ("beta", 32.0), ("tau", 0.1), ("tau", 0.35))})
    rows.update({name: Variant(2, config=fields) for name, fields in DEVIATIONS.items()})
    for rounds in REFINE_ROUNDS:
        rows[f"refine={rounds}"] = Variant(2, centroids="refined", refine=rounds)
    rows["refine=4 beta=16"] = Variant(2, centroids="refined", config={"beta": 16.0}, refine=4)
    rows["refine=4 beta=32"] = Variant(2, centroids="refined", config={"beta": 32.0}, refine=4)
    rows["CAM + PaS"] = Variant(0, pas=True)
    rows["CREAM T=2 + PaS"] = Variant(2, pas=True)
    return rows


# `cream fit-embeddings --refine R` rounds of the suite's refined rows
REFINE_ROUNDS = (2, 4)

# Named deviations from the default method (CreamConfig fields) that the suite ablates; the
# default calibration is cam-mean since 2026-12-04, so the paper's rule is a row of its own.
DEVIATIONS: dict[str, dict] = {"border=1": {"border": 1}, "calibration=none": {"calibration": "none"},
                               "calibration=omega": {"calibration": "omega"},
                               "upsample=2": {"upsample": 2},
                               "adapt_bg=0.5": {"adapt_bg": 0.5}, "adapt_bg=1": {"adapt_bg": 1.0},
                               "adapt_fg=0.5": {"adapt_fg": 0.5},
                               "adapt=0.5": {"adapt_fg": 0.5, "adapt_bg": 0.5},
                               "adapt=1": {"adapt_fg": 1.0, "adapt_bg": 1.0}}


def masks_at(root: Path, ids: list[str], h: int, w: int) -> np.ndarray:
    """Ground-truth masks `(B, h*w)` in [0,1] at feature resolution (area-averaged)."""
    return np.stack([cv2.resize(cv2.imread(str(root / "masks" / i), cv2.IMREAD_GRAYSCALE), (w, h),
                                interpolation=cv2.INTER_AREA).reshape(-1) / 255.0 for i in ids])


def oracle_centroids(features, masks, unit: bool):
    """Per-image mean feature (L2-normalised first when `unit`) inside (mask > 0.5) and outside
    (mask < 0.05) the object: `(B,2,K)`."""
    import torch

    from cream_rt.model.em import l2_normalize

    flat = features.flatten(2)
    if unit:
        flat = l2_normalize(flat, 1)
    inside, outside = (masks > 0.5).float(), (masks < 0.05).float()
    mean = lambda m: (flat * m[:, None]).sum(2) / m.sum(1, keepdim=True).clamp(min=1)  # noqa: E731
    return torch.stack([mean(inside), mean(outside)], 1)


class CellScorer:
    """Scores every variant of one trained model over the test split."""

    def __init__(self, model, raw_embeddings, meta, data_root: Path, interval: float = 0.01,
                 refined_embeddings: dict | None = None):
        from cream_rt.scoring import SplitScorer

        self.model, self.raw_embeddings, self.meta, self.root = model, raw_embeddings, meta, data_root
        self.refined_embeddings = refined_embeddings or {}  # rounds -> embeddings
        self.rows = {name: row for name, row in variants().items()
                     if row.centroids != "refined" or row.refine in self.refined_embeddings}
        self.scorers = {name: SplitScorer(meta, model.config.input_size, interval, pas=row.pas)
                        for name, row in self.rows.items()}
        # per row: sums of the final map (over its max) and of z~ inside / outside the object
        self.inside = {name: np.zeros(4) for name in self.rows}
        # per row: sums over images of the cosine of the EM's start to the oracle's centroids (fg, bg)
        self.start_cos = {name: np.zeros(2) for name in self.rows}
        self.pixels = np.zeros(2)  # pixels inside, outside
        self.flips = {name: 0 for name in self.rows}
        self.count = 0

    def maps(self, variant: Variant, features, cam, labels, oracle):
        """Feature-resolution map `(B,h,w)`, its re-activation part z~ `(B,N)` (minmax(CAM) for
        CAM), the calibration-flip flags `(B,)` of one variant, and the cosines `(B,2)` of the EM's
        start (fg, bg) to the oracle's centroids (None for CAM); `oracle`: those centroids by
        feature mean (unit: True / raw: False), computed once per batch."""
        import dataclasses

        import torch

        from cream_rt.model.em import adaptive_start, l2_normalize, minmax, reactivation

        cfg = dataclasses.replace(self.model.config.cream, **variant.config)
        unit = cfg.feature_mean == "unit"
        b, k, h, w = features.shape
        cam_n = minmax(cam.reshape(b, -1), (1,))
        if variant.iterations == 0:
            return cam_n.reshape(b, h, w), cam_n, torch.zeros(b, dtype=torch.bool), None
        oracle = oracle[unit]
        if variant.centroids == "oracle":
            centroids = oracle
        elif variant.centroids == "raw":
            centroids = self.raw_embeddings[labels]
        elif variant.centroids == "refined":
            centroids = self.refined_embeddings[variant.refine][labels]
        else:
            centroids = self.model.embeddings[labels]
        start = adaptive_start(features.flatten(2), cam_n, centroids, cfg.tau, unit, cfg.adapt_fg, cfg.adapt_bg)
        cos = (l2_normalize(start, 2) * l2_normalize(oracle, 2)).sum(2)
        out = reactivation(features, cam, start, variant.iterations, cfg.beta, cfg.tau, unit, cfg.border,
                           cfg.calibration, cfg.upsample)  # from the start above (adapt_* applied)
        return out.map, out.calibrated, ~out.keep_fg.reshape(b), cos

    def add(self, ids: list[str], x, labels) -> None:
        import torch

        from cream_rt.model.em import score_maps

        with torch.no_grad():
            features = self.model.features(x)
            logits = self.model.logits(features).numpy()
            cam = self.model.cam(features, labels)
            b, _, h, w = features.shape
            masks = torch.from_numpy(masks_at(self.root, ids, h, w)).float()
            inside, outside = masks > 0.5, masks < 0.05
            self.pixels += np.array([float(inside.sum()), float(outside.sum())])
            em = self.model.em_features(features)  # what the EM clusters
            oracle = {unit: oracle_centroids(em, masks, unit) for unit in (True, False)}
            for name, variant in self.rows.items():
                fmap, z, flipped, cos = self.maps(variant, em, cam, labels, oracle)
                if cos is not None:
                    self.start_cos[name] += cos.sum(0).numpy()
                self.scorers[name].add(ids, logits, score_maps(fmap, x.shape[-2:]).numpy())
                if fmap.shape[-2:] != (h, w):  # a finer EM grid: statistics at feature resolution
                    pool = torch.nn.functional.adaptive_avg_pool2d
                    z = pool(z.reshape(fmap.shape)[:, None], (h, w)).reshape(b, -1)
                    fmap = pool(fmap[:, None], (h, w))[:, 0]
                norm = fmap.reshape(b, -1) / fmap.reshape(b, -1).amax(1, keepdim=True).clamp(min=1e-12)
                self.inside[name] += [float(norm[inside].sum()), float(norm[outside].sum()),
                                      float(z[inside].sum()), float(z[outside].sum())]
                self.flips[name] += int(flipped.sum())
        self.count += len(ids)

    def result(self) -> dict:
        out = {}
        for name, scorer in self.scorers.items():
            m = scorer.result()
            s, (n_in, n_out) = self.inside[name], np.maximum(self.pixels, 1)
            out[name] = {"MaxBoxAccV2": m["MaxBoxAccV2"], "GT_known_Loc": m["GT_known_Loc"],
                         "MaxBoxAccV2_per_iou": m["MaxBoxAccV2_per_iou"],
                         "classification_top1": m["classification_top1"],
                         "inside": s[0] / n_in, "outside": s[1] / n_out, "z_inside": s[2] / n_in,
                         "z_outside": s[3] / n_out, "calibration_flips": self.flips[name] / max(self.count, 1),
                         "start_cos_fg": self.start_cos[name][0] / max(self.count, 1),
                         "start_cos_bg": self.start_cos[name][1] / max(self.count, 1)}
        return out


def score_cell(checkpoint: Path, raw_checkpoint: Path, data: Path, batch_size: int = 50,
               refined_checkpoints: dict[int, Path] | None = None) -> dict:
    """All variants of a trained checkpoint on the test split of `data`."""
    import torch

    from cream_rt.metadata import read_split, split_paths
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.scoring import split_batches

    model, _ = load_checkpoint(checkpoint)
    raw, _ = load_checkpoint(raw_checkpoint)
    split_dir, images = split_paths(data, "test")
    meta = read_split(split_dir)
    cfg = model.config
    refined = {rounds: load_checkpoint(path)[0].embeddings for rounds, path in (refined_checkpoints or {}).items()}
    scorer = CellScorer(model.eval(), raw.embeddings, meta, data, refined_embeddings=refined)
    for chunk, x, labels in split_batches(meta, images, batch_size, cfg.input_size, cfg.mean, cfg.std, "score"):
        scorer.add(chunk, torch.from_numpy(x), torch.from_numpy(labels))
    return scorer.result()


def cli_json(argv: list[str]) -> dict:
    """Run a `cream` subcommand with --json and return what it printed (its log lines dropped)."""
    from cream_rt.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
        status = main(argv + ["--json"])
    if status != 0:
        raise RuntimeError(f"cream {' '.join(argv)} exited with {status}")
    return json.loads(buffer.getvalue())


def int8_rows(checkpoint: Path, data: Path, work: Path) -> dict:
    """MaxBoxAccV2 / GT-known of the fp32 and int8 ONNX exports (CREAM, default T) on the test split,
    through the CLI as a user runs it (an export newer than the checkpoint is reused)."""
    rows = {}
    for name, extra in (("fp32", []), ("int8", ["--int8", "--calibration-data", str(data)])):
        model = work / f"{name}.onnx"
        if not model.is_file() or model.stat().st_mtime < checkpoint.stat().st_mtime:
            cli_json(["export", "--checkpoint", str(checkpoint), "--out", str(model)] + extra)
        m = cli_json(["eval", "--model", str(model), "--data", str(data), "--split", "test"])
        rows[f"ONNX {name}"] = {"MaxBoxAccV2": m["MaxBoxAccV2"], "GT_known_Loc": m["GT_known_Loc"]}
    return rows


def regressor_row(ckpt: Path, data: Path, cell_dir: Path, epochs: int, seed: int) -> dict:
    """CREAM + box regressor (`cream train-regressor`, pseudo boxes at the val-optimal threshold),
    its boxes scored as boxes on the test split, Top-1 from the CAM model's classes."""
    from cream_rt.metadata import read_split, split_paths
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.model.regressor import load_regressor
    from cream_rt.train.regressor import score_regressor, train_regressor

    path = cell_dir / "regressor.pt"
    if not path.is_file():
        train_regressor(str(ckpt), str(data), str(path), epochs=epochs, seed=seed, log=lambda line: None)
    split_dir, images = split_paths(data, "test")
    model = load_checkpoint(ckpt)[0].eval()
    return score_regressor(load_regressor(path), read_split(split_dir), images, 50, "cpu", logits_model=model)


def train_cell(preset_name: str, backbone: str, seed: int, work: Path,
               embedding_pass: bool = False) -> tuple[Path, Path]:
    """Synthesize the cell's data and train its model (resumable; deterministic per seed), as the
    suite's cells were trained: the embeddings the momentum rule left, unless `embedding_pass`
    (the trainer's default since 2026-12-05, which changes nothing else), on the CAM's features
    (`em_layer` "cam": the suite's rows move the EM to other layers themselves; the network is
    trained the same on any). Returns (checkpoint, data)."""
    from cream_rt.model.checkpoint import load_checkpoint, training_progress
    from cream_rt.model.config import CAM_LAYER, CreamConfig
    from cream_rt.synth import generate, preset
    from cream_rt.train.trainer import TrainConfig, train

    recipe = RECIPES[backbone]
    cell_dir = work / f"{preset_name}-{backbone}-s{seed}"
    data = work / f"data-{preset_name}-{recipe.image_size}-s{seed}"
    if not (data / "metadata" / "test" / "localization.txt").is_file():
        generate(data, preset(preset_name, size=recipe.image_size, train=recipe.train, val=recipe.val,
                              test=recipe.test, seed=seed), show_progress=False)
    cell_dir.mkdir(parents=True, exist_ok=True)
    ckpt = cell_dir / "model.pt"
    done = training_progress(load_checkpoint(ckpt)[1], ckpt)[0] if ckpt.is_file() else 0
    if done < recipe.epochs:  # new, or cut off after an epoch's checkpoint: resume from it
        train(backbone, str(data), str(ckpt), config=TrainConfig(epochs=recipe.epochs, seed=seed,
                                                                 lr_decay_epochs=recipe.lr_decay_epochs,
                                                                 embedding_pass=embedding_pass),
              cream=CreamConfig(em_layer=CAM_LAYER), input_size=recipe.input_size, log=lambda line: None,
              resume=str(ckpt) if done else None)
    return ckpt, data


def run_cell(preset_name: str, backbone: str, seed: int, work: Path, log, regressor: bool = False,
             int8: bool = True) -> dict:
    """Synthesize, train (default CREAM settings), refit raw embeddings, score; returns the cell.
    With `regressor`, also CREAM + box regressor; without `int8`, no ONNX rows."""
    from cream_rt.train.trainer import fit_embeddings

    started = time.time()
    recipe = RECIPES[backbone]
    ckpt, data = train_cell(preset_name, backbone, seed, work)
    cell_dir = ckpt.parent
    raw = cell_dir / "raw.pt"
    if not raw.is_file():
        fit_embeddings(str(ckpt), str(data), str(raw), seed=seed, feature_mean="raw", estimate="momentum")
    refined = {rounds: cell_dir / f"refined{rounds}.pt" for rounds in REFINE_ROUNDS}
    for rounds, path in refined.items():
        if not path.is_file():
            fit_embeddings(str(ckpt), str(data), str(path), batch_size=50, refine=rounds, estimate="momentum")
    rows = score_cell(ckpt, raw, data, refined_checkpoints=refined)
    if backbone != "small-cnn" and int8:
        rows.update(int8_rows(ckpt, data, cell_dir))
    if regressor:
        rows["CREAM T=2 + regressor"] = regressor_row(ckpt, data, cell_dir, recipe.epochs, seed)
    cell = {"preset": preset_name, "backbone": backbone, "seed": seed, "rows": rows,
            "seconds": round(time.time() - started, 1)}
    log(f"{preset_name:10s} {backbone:18s} seed {seed}: CAM {rows['CAM']['MaxBoxAccV2']:.2f}  "
        f"CREAM T=2 {rows['CREAM T=2']['MaxBoxAccV2']:.2f}  raw {rows['CREAM raw T=2']['MaxBoxAccV2']:.2f}  "
        f"oracle {rows['oracle EM T=1']['MaxBoxAccV2']:.2f}  acc {rows['CAM']['classification_top1']:.1f}  "
        f"({cell['seconds']:.0f} s)")
    return cell


def summarize(cells: list[dict]) -> dict:
    """Means over seeds per (preset, backbone): every row's metrics, the oracle's separation
    (inside - outside of its map) and the targets' verdicts."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["preset"], cell["backbone"]), []).append(cell)
    summary = {}
    for (preset_name, backbone), group in groups.items():
        group = sorted(group, key=lambda c: c["seed"])
        rows = {}
        for name in dict.fromkeys(n for c in group for n in c["rows"]):  # rows some seeds lack count too
            values = [c["rows"][name] for c in group if name in c["rows"]]
            rows[name] = {k: float(np.mean([v[k] for v in values])) for k, v0 in values[0].items()
                          if isinstance(v0, (int, float))}
            if len(values) < len(group):
                rows[name]["seeds"] = [c["seed"] for c in group if name in c["rows"]]
        oracle_sep = rows["oracle EM T=1"]["z_inside"] - rows["oracle EM T=1"]["z_outside"]
        gain = rows["CREAM T=2"]["MaxBoxAccV2"] - rows["CAM"]["MaxBoxAccV2"]
        summary[f"{preset_name}/{backbone}"] = {
            "preset": preset_name, "backbone": backbone, "seeds": [c["seed"] for c in group], "rows": rows,
            "oracle_separation": oracle_sep, "gain_T2_over_CAM": gain,
            "target": ">= +3" if oracle_sep >= 0.4 else ">= -1",
            "target_met": bool(gain >= 3.0) if oracle_sep >= 0.4 else bool(gain >= -1.0)}
    return summary


# The team's rule for a new default (DEVELOPERS.md): over the suite, 3 seeds per cell and every
# backbone, >= 1 MaxBoxAccV2 better on the mean over cells and no cell more than 0.5 worse.
RULE_SEEDS, RULE_MEAN_GAIN, RULE_WORST_LOSS = 3, 1.0, 0.5


def default_rule(summary: dict, row: str, baseline: str = "CREAM T=2",
                 backbones: tuple[str, ...] = tuple(RECIPES)) -> dict | None:
    """`row` against `baseline` under the default-change rule: mean and worst per-cell difference
    of MaxBoxAccV2 over the cells that have both rows, whether every cell has all seeds, and the
    verdict: "fails" once a cell with all its seeds loses more than the limit (or the complete
    suite's mean gain is short), "passes" on the complete suite, else "open" (None where no cell
    has the row). The suite is complete with every preset on each of `backbones`."""
    diffs = {key: s["rows"][row]["MaxBoxAccV2"] - s["rows"][baseline]["MaxBoxAccV2"]
             for key, s in summary.items() if row in s["rows"] and baseline in s["rows"]}
    if not diffs:
        return None
    worst = min(diffs, key=diffs.get)
    settled = [key for key in diffs if len(summary[key]["seeds"]) >= RULE_SEEDS
               and "seeds" not in summary[key]["rows"][row]]  # cells with every seed of this row
    suite = {f"{preset}/{backbone}" for preset in SUITES["default"] for backbone in backbones}
    complete = suite <= set(settled)  # every preset of the suite, every backbone, all seeds
    mean = float(np.mean(list(diffs.values())))
    worst_settled = min(settled, key=diffs.get) if settled else None
    if (worst_settled and diffs[worst_settled] < -RULE_WORST_LOSS) or (complete and mean < RULE_MEAN_GAIN):
        verdict = "fails"
    elif complete:
        verdict = "passes"
    else:
        verdict = "open (cells or seeds missing)"
    return {"row": row, "mean_gain": mean, "worst_cell": worst, "worst_gain": diffs[worst], "cells": len(diffs),
            "worst_settled_cell": worst_settled, "worst_settled_gain": diffs[worst_settled] if settled else None,
            "complete": complete, "verdict": verdict}


def _cos(cell: dict, row: str) -> str:
    r = cell["rows"].get(row, {})
    return f"{r['start_cos_fg']:.2f} / {r['start_cos_bg']:.2f}" if "start_cos_fg" in r else ""


def markdown(summary: dict, command: str) -> str:
    """The suite's table: MaxBoxAccV2 (GT-known) per cell and row, means over seeds."""
    keys = list(summary)
    row_names = list(dict.fromkeys(name for s in summary.values() for name in s["rows"]))
    lines = [f"<!-- written by: {command} -->",
             "MaxBoxAccV2 (GT-known Loc), test split, mean over the seeds listed; inside/outside: mean map "
             "in / out of the object at feature resolution; flips: images whose calibration swapped the components.",
             "", "| row | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name in row_names:
        cells = []
        for key in keys:
            r = summary[key]["rows"].get(name)
            partial = "" if r is None or "seeds" not in r else " seed " + ",".join(str(s) for s in r["seeds"])
            cells.append("" if r is None else f"{r['MaxBoxAccV2']:.1f} ({r['GT_known_Loc']:.1f}){partial}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, fn in (("CREAM T=2 - CAM", lambda s: f"{s['gain_T2_over_CAM']:+.1f}"),
                      ("oracle separation", lambda s: f"{s['oracle_separation']:.2f}"),
                      ("CREAM T=2 in / out", lambda s: f"{s['rows']['CREAM T=2']['inside']:.2f} / "
                                                       f"{s['rows']['CREAM T=2']['outside']:.2f}"),
                      ("CAM in / out", lambda s: f"{s['rows']['CAM']['inside']:.2f} / "
                                                 f"{s['rows']['CAM']['outside']:.2f}"),
                      ("calibration flips T=2", lambda s: f"{100 * s['rows']['CREAM T=2']['calibration_flips']:.1f}%"),
                      ("start cos to oracle fg / bg: learned", lambda s: _cos(s, "CREAM T=2")),
                      ("start cos to oracle fg / bg: adapt=0.5", lambda s: _cos(s, "adapt=0.5")),
                      ("start cos to oracle fg / bg: adapt=1", lambda s: _cos(s, "adapt=1")),
                      ("start cos to oracle fg / bg: refine=4", lambda s: _cos(s, "refine=4")),
                      ("classification top-1", lambda s: f"{s['rows']['CAM']['classification_top1']:.1f}"),
                      ("target (met?)", lambda s: f"{s['target']} ({'yes' if s['target_met'] else 'NO'})"),
                      ("seeds", lambda s: ",".join(str(v) for v in s["seeds"]))):
        lines.append(f"| {label} | " + " | ".join(fn(summary[k]) for k in keys) + " |")
    lines += ["", f"Default rule against `CREAM T=2` (>= {RULE_MEAN_GAIN:g} on the mean over cells, no cell below "
                  f"-{RULE_WORST_LOSS:g}, {RULE_SEEDS} seeds in every cell); a loss beyond the limit in a cell with "
                  "all its seeds fails a row at once:", "",
              "| row | mean gain | worst cell | worst cell with all seeds | cells | verdict |",
              "|---|---|---|---|---|---|"]
    for name in row_names:
        verdict = default_rule(summary, name) if name not in ("CAM", "CREAM T=2") and "oracle" not in name else None
        if verdict:
            worst = f"{verdict['worst_cell']} {verdict['worst_gain']:+.2f}"
            settled = (f"{verdict['worst_settled_cell']} {verdict['worst_settled_gain']:+.2f}"
                       if verdict["worst_settled_cell"] else "")
            lines.append(f"| {name} | {verdict['mean_gain']:+.2f} | {worst} | {settled} | {verdict['cells']} "
                         f"| {verdict['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="default", help=f"one of {', '.join(SUITES)}")
    parser.add_argument("--presets", help="comma-separated presets instead of the suite's")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--backbones", default="small-cnn,efficientnet-lite0")
    parser.add_argument("--work", default="accuracy_work", help="data and checkpoints (reused when present)")
    parser.add_argument("--out", default="bench/results/accuracy_suite.json",
                        help="JSON of every cell; the Markdown table goes beside it (.md)")
    parser.add_argument("--append", action="store_true",
                        help="keep the cells already in --out (other backbones or seeds; a re-run cell is replaced); "
                             "read again before each write, so two runs may append to one file")
    parser.add_argument("--no-int8", action="store_true", help="skip the ONNX fp32 / int8 rows of pretrained cells")
    parser.add_argument("--regressor", action="store_true",
                        help="also train CREAM's box regressor per cell (kept in the work folder) and score its boxes")
    args = parser.parse_args(argv)
    from cream_rt.atomic import atomic_path, write_json
    from cream_rt.bench.machine import command_line, machine_info
    from cream_rt.synth import PRESETS

    presets = args.presets.split(",") if args.presets else list(SUITES[args.suite])
    unknown = [p for p in presets if p not in PRESETS]
    backbones = args.backbones.split(",")
    if unknown or any(b not in RECIPES for b in backbones):
        parser.error(f"unknown preset or backbone: {unknown or backbones}")
    seeds = [int(s) for s in args.seeds.split(",")]
    command = command_line("accuracy", argv)
    work = Path(args.work)
    out = Path(args.out)
    cells: list[dict] = []
    log = lambda line: print(line, flush=True)  # noqa: E731
    for backbone in backbones:
        for preset_name in presets:
            for seed in seeds:
                cell = run_cell(preset_name, backbone, seed, work, log, args.regressor, not args.no_int8)
                key = (preset_name, backbone, seed)
                cells = [c for c in cells if (c["preset"], c["backbone"], c["seed"]) != key] + [cell]
                # --append: merge with what --out holds now (another run may be adding cells to it)
                previous = json.loads(out.read_text()) if args.append and out.is_file() else {"cells": []}
                mine = {(c["preset"], c["backbone"], c["seed"]) for c in cells}
                merged = [c for c in previous["cells"] if (c["preset"], c["backbone"], c["seed"]) not in mine] + cells
                commands = list(dict.fromkeys(previous.get("commands", []) + [command]))
                summary = summarize(merged)
                record = {"command": command, "commands": commands, "date": date.today().isoformat(),
                          "machine": machine_info(), "recipes": {b: RECIPES[b].__dict__ for b in RECIPES},
                          "summary": summary, "cells": merged}
                write_json(out, record)  # after every cell: a long run keeps what it measured
                with atomic_path(out.with_suffix(".md")) as tmp:
                    tmp.write_text(markdown(summary, " && ".join(commands)))
    print(markdown(summarize(cells), command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
