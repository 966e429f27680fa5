"""The accuracy suite: where CREAM beats CAM, on real photographs first and on synthetic sets.
A cell is a model and its data; each row is scored on the cell's val and test splits (top-1,
GT-known Loc, MaxBoxAccV2): choose on val, report on test. Cells and rows: docs/accuracy.md.
Real cells read `../shared/data/real` (or $CREAM_REAL_DATA) in place: `ilsvrc-own` (Lite0's
ImageNet head, fitted on the train split), `ilsvrc-disjoint` (fitted on val only; val scored
two-fold), `rk-<backbone>-s<seed>` (raccoon_kangaroo, trained as REAL_RECIPES say). Synthetic
cells `synth-<preset>-<backbone>-s<seed>` train as SYNTH_RECIPES say.

`python -m bench.accuracy --cells real --settings 'grid;default;previous' --tuned --int8 \\
    --out bench/results/accuracy.json`"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from cream_rt.train.tune import (
    CachedSplit,
    Setting,
    cache_split,
    candidate_layers,
    cross_fitted_score,
    fitted_model,
    grid,
    score,
    staged,
)

REAL_DATA = Path(os.environ.get("CREAM_REAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/real"))
# how the raccoon_kangaroo cells train (`cream train` flags), per backbone
REAL_RECIPES = {"efficientnet-lite0": ["--epochs", "4", "--lr", "0.01"],
                "small-cnn": ["--epochs", "30", "--lr-decay-epochs", "20"]}
# the ImageNet classifiers of the ilsvrc cells (`cream import --from imagenet`)
IMAGENET_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
TRAINED_SETS = {"rk": "raccoon_kangaroo", "fruits": "fruits"}  # real sets a cell trains on
REAL_CELLS = (*(f"ilsvrc-{p}-{b}" for b in IMAGENET_BACKBONES for p in ("own", "disjoint")),
              *(f"rk-{b}-s{s}" for b in REAL_RECIPES for s in (0, 1, 2)),
              *(f"fruits-efficientnet-lite0-s{s}" for s in (0, 1, 2)))
PRESETS = ("default", "no-decoys", "tinted", "small", "clutter", "photo")
REFINE = 1  # refinement rounds of every fit (the shipped default)
# The rule for a new default (docs/method.md 3.10): >= 1 point better on the mean over the real val
# cells, no real cell more than 0.5 worse, no synthetic cell below CAM.
RULE_MEAN_GAIN, RULE_WORST_LOSS = 1.0, 0.5


@dataclass(frozen=True)
class SynthRecipe:
    """How one backbone is trained in a synthetic cell: image side, input size, epochs, data sizes."""

    image_size: int
    input_size: int
    epochs: int
    lr_decay_epochs: tuple[int, ...]
    train: int = 1500
    val: int = 150
    test: int = 300


SYNTH_RECIPES = {
    "small-cnn": SynthRecipe(image_size=96, input_size=96, epochs=6, lr_decay_epochs=(4,)),
    "efficientnet-lite0": SynthRecipe(image_size=160, input_size=160, epochs=2, lr_decay_epochs=(1,), train=1200),
}


def shipped(backbone: str, stock: bool = False):
    """The Setting the shipped defaults give on `backbone` in the stock or WSOL layout
    (BackboneSpec and CreamConfig)."""
    from cream_rt.config import CreamConfig
    from cream_rt.model.backbones import get_backbone
    d, c = get_backbone(backbone).cream_defaults(stock), CreamConfig()
    return Setting(d.em_layer, d.center, d.iterations, c.feature_mean, c.embeddings, c.fallback)


def previous(backbone: str):
    """The defaults before this round's real-photo cells decided them (EfficientNet-Lite: the EM on
    `_blocks.11`, centered, T=1, chosen on the mis-normalised stride-16 Lite0)."""
    return Setting("_blocks.11", True, 1) if backbone.startswith("efficientnet-lite") else Setting("cam", False, 2)


def parse_cell(name: str) -> tuple[str, str, int]:
    """(dataset: ilsvrc-own, ilsvrc-disjoint, rk, fruits or synth-<preset>; backbone; seed) of a cell name."""
    for protocol in ("ilsvrc-own", "ilsvrc-disjoint"):
        if name.startswith(protocol + "-") and name[len(protocol) + 1:] in IMAGENET_BACKBONES:
            return protocol, name[len(protocol) + 1:], 0
    head, _, seed = name.rpartition("-s")
    backbone = next((b for b in REAL_RECIPES if head.endswith("-" + b)), None)
    dataset = head[:-len(backbone) - 1] if backbone else ""
    if (dataset not in TRAINED_SETS and dataset[len("synth-"):] not in PRESETS) or not seed.isdigit():
        raise ValueError(f"unknown cell {name!r}: ilsvrc-own-<lite>, ilsvrc-disjoint-<lite>, "
                         f"rk|fruits-<backbone>-s<seed> or synth-<preset>-<backbone>-s<seed>")
    return dataset, backbone, int(seed)


def cell_names(spec: str) -> list[str]:
    """`real`, `synthetic` (every preset on both backbones, seeds 0-2) or comma-separated names."""
    synthetic = [f"synth-{p}-{b}-s{s}" for b in SYNTH_RECIPES for p in PRESETS for s in (0, 1, 2)]
    return {"real": list(REAL_CELLS), "synthetic": synthetic}.get(spec, spec.split(","))


def synth_cell(preset_name: str, backbone: str, seed: int, work: Path) -> tuple[Path, Path]:
    """Synthesize the cell's data and train its model (resumable; deterministic per seed).
    Returns (checkpoint, data root)."""
    from cream_rt.config import CAM_LAYER, CreamConfig
    from cream_rt.model.checkpoint import load_checkpoint, training_progress
    from cream_rt.synth import generate, preset
    from cream_rt.train.trainer import TrainConfig, train

    recipe = SYNTH_RECIPES[backbone]
    data = work / f"data-{preset_name}-{recipe.image_size}-s{seed}"
    if not (data / "metadata" / "test" / "localization.txt").is_file():
        generate(data, preset(preset_name, size=recipe.image_size, train=recipe.train, val=recipe.val,
                              test=recipe.test, seed=seed), show_progress=False)
    ckpt = work / f"{preset_name}-{backbone}-s{seed}" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    done = training_progress(load_checkpoint(ckpt)[1], ckpt)[0] if ckpt.is_file() else 0
    if done < recipe.epochs:  # new, or cut off after an epoch's checkpoint: resume from it
        train(backbone, str(data), str(ckpt), config=TrainConfig(epochs=recipe.epochs, seed=seed,
                                                                 lr_decay_epochs=recipe.lr_decay_epochs,
                                                                 embedding_pass=False),
              cream=CreamConfig(em_layer=CAM_LAYER), input_size=recipe.input_size,
              resume=str(ckpt) if done else None)
    return ckpt, data


def cli(argv: list[str]) -> dict:
    """`cream ARGV --json` in this process; its JSON (log lines dropped)."""
    import contextlib
    import io

    from cream_rt.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
        status = main([*argv, "--json"])
    if status != 0:
        raise RuntimeError(f"cream {' '.join(argv)} exited with {status}")
    return json.loads(buffer.getvalue())


def cell_model(dataset: str, backbone: str, seed: int, work: Path) -> tuple[Path, Path]:
    """(the cell's checkpoint, its data root), made once in `work`; real cells through the CLI as
    a user makes them."""
    if dataset.startswith("synth-"):
        return synth_cell(dataset[len("synth-"):], backbone, seed, work)
    root = REAL_DATA / ("ilsvrc_dev" if dataset.startswith("ilsvrc") else TRAINED_SETS[dataset])
    if dataset.startswith("ilsvrc"):
        path = work / f"ilsvrc-{backbone}.pt"
        argv = ["import", "--from", "imagenet", "--arch", backbone, "--out", str(path)]
    else:
        path = work / f"{dataset}-{backbone}-s{seed}.pt"
        argv = ["train", "--data", str(root), "--backbone", backbone, "--seed", str(seed), "--out", str(path),
                *REAL_RECIPES[backbone]]
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        cli(argv)
    return path, root


def metrics_row(m: dict) -> dict:
    return {"MaxBoxAccV2": m["MaxBoxAccV2"], "GT_known_Loc": m["GT_known_Loc"],
            "top1": m.get("classification_top1"), "MaxBoxAcc_threshold": m["MaxBoxAcc_threshold"]}


def oracle_row(model, split, interval: float) -> dict:
    """The oracle EM (T=1, no calibration) on `model`'s EM layer: per-image centroids of the
    features inside (> 0.5 covered) and outside (< 0.05) the ground-truth boxes."""
    import cv2
    import torch

    from cream_rt.evaluate import gt_boxes_at
    from cream_rt.model.em import centered, l2_normalize, reactivation, score_maps
    from cream_rt.scoring import SplitScorer

    em = split.layers[model.em_layer].float()
    h, w = em.shape[-2:]
    size = split.input_size
    masks = []
    for image_id in split.ids:
        full = np.zeros((size, size), np.float32)
        for x0, y0, x1, y1 in gt_boxes_at(split.meta, image_id, (size, size)):
            full[y0:y1 + 1, x0:x1 + 1] = 1.0
        masks.append(cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA).reshape(-1))
    masks = torch.from_numpy(np.stack(masks))
    x = l2_normalize(centered(em.flatten(2), model.center), 1)
    mean = lambda m: (x * m[:, None]).sum(2) / m.sum(1, keepdim=True).clamp(min=1)  # noqa: E731
    centroids = torch.stack([mean((masks > 0.5).float()), mean((masks < 0.05).float())], 1)
    oracle = model.config.cream.with_changes(feature_mean="unit", calibration="none")
    maps = reactivation(em, split.cam_on(model.em_layer, slice(None)), centroids, oracle, iterations=1,
                        center=model.center).map
    scorer = SplitScorer(split.meta, size, interval)
    for image_id in split.unreadable:
        scorer.add_unreadable(image_id)
    scorer.add(split.ids, split.logits, score_maps(maps, (size, size)).numpy())
    return metrics_row(scorer.result())


class Cell:
    """One cell: its model, its splits cached once (every candidate layer), the rows it scores."""

    def __init__(self, name: str, work: Path, interval: float = 0.01):
        import torch

        from cream_rt.metadata import read_split
        from cream_rt.model.checkpoint import load_checkpoint
        from cream_rt.unreadable import UnreadableImages

        self.name, self.interval = name, interval
        self.dataset, self.backbone, self.seed = parse_cell(name)
        self.checkpoint, self.root = cell_model(self.dataset, self.backbone, self.seed, work)
        self.model = load_checkpoint(self.checkpoint)[0]
        self.layers = candidate_layers(self.model)
        self.fit_split = "val" if self.dataset == "ilsvrc-disjoint" else "train"
        cache = work / f"cache-{name}.pt"  # tensors and plain lists only: read back without unpickling objects
        metas = {s: read_split(self.root / "metadata" / s, s != "train")
                 for s in dict.fromkeys([self.fit_split, "val", "test"])}
        if cache.is_file():
            state = torch.load(cache, weights_only=True)
            self.splits = {s: CachedSplit(meta, **{**state[s], "logits": state[s]["logits"].numpy()})
                           for s, meta in metas.items()}
        else:
            unreadable = UnreadableImages(100)
            self.splits = {s: cache_split(self.model, meta, self.root / "images", self.layers, 50, unreadable,
                                          f"{name} {s}") for s, meta in metas.items()}
            torch.save({s: {**{f.name: getattr(split, f.name) for f in dataclasses.fields(split) if f.name != "meta"},
                            "logits": torch.from_numpy(split.logits)} for s, split in self.splits.items()}, cache)
        self.fit = self.splits[self.fit_split]

    def default(self):
        """The shipped default Setting of this cell's model (its backbone, its layout)."""
        return shipped(self.backbone, self.model.config.stock_strides)

    def fitted(self, setting, fit=None):
        return fitted_model(self.model, fit or self.fit, setting, REFINE)

    def val_score(self, setting, model) -> dict:
        """The setting's val metrics with `model` (its fit on the fit split), or in the disjoint
        cell two-fold: fitted on one half of val, scored on the other, pooled."""
        val = self.splits["val"]
        if self.dataset != "ilsvrc-disjoint":
            return metrics_row(score(model, val, self.interval))
        return metrics_row(cross_fitted_score(self.model, val, setting, REFINE, self.interval))

    def row(self, setting) -> dict:
        model = self.fitted(setting)
        return {"val": self.val_score(setting, model),
                "test": metrics_row(score(model, self.splits["test"], self.interval)),
                "setting": dataclasses.asdict(setting)}

    def tuned_row(self) -> dict:
        """`cream tune`'s staged search from the shipped default on this cell's val split (in the
        disjoint cell: two-fold on val, as `cream tune --fit-split val` does), scored on test."""
        base = self.fitted(self.default())
        result = staged(base, self.layers, (1, 2, 3), self.fit, self.splits["val"], REFINE, self.interval)
        return {**self.row(Setting(**result["best"]["setting"])), "name": result["best"]["name"]}

    def int8_rows(self, work: Path) -> dict:
        """The shipped default's fp32 and int8 exports on test through the CLI; int8 calibrated on
        photos the test split does not hold (ilsvrc: val; the trained sets: train)."""
        from cream_rt.model.checkpoint import save_checkpoint

        ckpt = work / f"{self.name}-default.pt"
        save_checkpoint(ckpt, self.fitted(self.default()))
        calibration = "val" if self.dataset.startswith("ilsvrc") else "train"
        rows = {}
        for precision, extra in (("fp32", []), ("int8", ["--int8", "--calibration-data", str(self.root),
                                                         "--calibration-split", calibration])):
            onnx_path = work / f"{self.name}-default-{precision}.onnx"
            cli(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path), *extra])
            m = cli(["eval", "--model", str(onnx_path), "--data", str(self.root), "--split", "test"])
            rows[f"ONNX {precision} default"] = {"test": metrics_row(m), "calibration_split": calibration}
        return rows


def settings_named(spec: str, cell: Cell) -> list:
    """`grid` (every layer x center at T=2), `default`, `previous`, or ';'-separated specs
    `layer,center|no-center,T[,unit|raw][,per-class|agnostic][,class-mean|image-mean]`."""
    out = []
    for item in spec.split(";"):
        if item == "grid":
            out += grid(cell.layers, (False, True), (2,), ("unit",), ("per-class",), ("class-mean",))
        elif item in ("default", "previous"):
            out.append(cell.default() if item == "default" else previous(cell.backbone))
        else:
            parts = item.split(",")
            extra = [next((p for p in parts[3:] if p in options), options[0])
                     for options in (("unit", "raw"), ("per-class", "agnostic"), ("class-mean", "image-mean"))]
            out.append(Setting(parts[0], parts[1] == "center", int(parts[2]), *extra))
    return [s for s in out if _resolved(cell, s.em_layer) in cell.layers]


def _resolved(cell: Cell, layer: str) -> str | None:
    """`layer` as the cell's backbone names it, or None where it names a place the backbone lacks."""
    from cream_rt.errors import CreamError

    try:
        return cell.model.backbone.resolve_layer(layer)
    except CreamError:
        return None


def summarize(cells: dict) -> dict:
    """Per cell group (dataset/backbone): the seeds and each row's val and test metrics averaged
    over the seeds that have it."""
    groups: dict[str, list[dict]] = {}
    for cell in cells.values():
        groups.setdefault(f"{cell['dataset']}/{cell['backbone']}", []).append(cell)
    out = {}
    for key, group in groups.items():
        rows = {}
        for name in dict.fromkeys(n for c in group for n in c["rows"]):
            have = [c for c in group if name in c["rows"]]
            rows[name] = {split: {m: float(np.mean([c["rows"][name][split][m] for c in have]))
                                  for m in ("MaxBoxAccV2", "GT_known_Loc")}
                          for split in ("val", "test") if split in have[0]["rows"][name]}
            rows[name]["seeds"] = sorted(c["seed"] for c in have)
            top1 = [c["rows"][name]["test"].get("top1") for c in have]
            if "test" in rows[name] and None not in top1:
                rows[name]["test"]["top1"] = float(np.mean(top1))
        out[key] = {"seeds": sorted(c["seed"] for c in group), "real": not key.startswith("synth-"), "rows": rows}
    return out


def default_rule(summary: dict, row: str, baseline: str, backbones: tuple[str, ...]) -> dict | None:
    """`row` against `baseline` under the rule, over the groups of `backbones`: the mean and the
    worst val difference over the real groups, the synthetic groups where `row` falls below CAM
    (val), and the verdict ("open" while a real group lacks either row or a synthetic group is
    missing the row)."""
    def val(group, name):
        r = group["rows"].get(name, {})
        return r["val"]["MaxBoxAccV2"] if "val" in r else None

    mine = {k: g for k, g in summary.items() if k.split("/")[1] in backbones}
    real = {k: val(g, row) - val(g, baseline) for k, g in mine.items()
            if g["real"] and None not in (val(g, row), val(g, baseline))}
    if not real:
        return None
    below = sorted(k for k, g in mine.items() if not g["real"] and val(g, row) is not None
                   and val(g, row) < val(g, "CAM"))
    missing = [k for k, g in mine.items() if (g["real"] and k not in real) or val(g, row) is None]
    worst = min(real, key=real.get)
    mean = float(np.mean(list(real.values())))
    fails = mean < RULE_MEAN_GAIN or real[worst] < -RULE_WORST_LOSS or below
    verdict = "fails" if fails else "open (groups missing)" if missing else "passes"
    return {"row": row, "baseline": baseline, "mean_gain": mean, "worst_group": worst, "worst_gain": real[worst],
            "real_groups": len(real), "synthetic_below_cam": below, "missing": missing, "verdict": verdict}


def markdown(summary: dict, rules: list[dict], command: str) -> str:
    """Real groups first: MaxBoxAccV2 val / test per row, then the synthetic ones, then the rule."""
    lines = [f"<!-- written by: {command} -->",
             "MaxBoxAccV2 on val / test (means over the seeds of each group; val chooses, test reports).", ""]
    for real in (True, False):
        keys = [k for k, g in summary.items() if g["real"] is real]
        if not keys:
            continue
        names = list(dict.fromkeys(n for k in keys for n in summary[k]["rows"]))
        lines += ["| row | " + " | ".join(f"{k} (seeds {','.join(map(str, summary[k]['seeds']))})" for k in keys)
                  + " |", "|---|" + "---|" * len(keys)]
        for name in names:
            cells = []
            for k in keys:
                r = summary[k]["rows"].get(name, {})
                cells.append(" / ".join(f"{r[s]['MaxBoxAccV2']:.1f}" if s in r else "-" for s in ("val", "test"))
                             if r else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if rules:
        lines += [f"Default rule (>= {RULE_MEAN_GAIN:g} on the mean over the real val groups, none below "
                  f"-{RULE_WORST_LOSS:g}, no synthetic group below CAM on val):", "",
                  "| row | vs | mean gain | worst real group | synthetic below CAM | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in rules:
            lines.append(f"| {r['row']} | {r['baseline']} | {r['mean_gain']:+.2f} | {r['worst_group']} "
                         f"{r['worst_gain']:+.2f} | {', '.join(r['synthetic_below_cam']) or 'none'} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="real", help="real, synthetic, or comma-separated cell names")
    parser.add_argument("--settings", default="default;previous", help="see settings_named")
    parser.add_argument("--tuned", action="store_true", help="also the setting cream tune's search picks on val")
    parser.add_argument("--int8", action="store_true", help="real cells: the default's fp32 and int8 exports")
    parser.add_argument("--rule", default="default:previous default",
                        help="ROW:BASELINE pairs (';'-separated) the default rule is applied to, per backbone")
    parser.add_argument("--work", default="accuracy_work")
    parser.add_argument("--out", default="bench/results/accuracy.json")
    args = parser.parse_args(argv)
    import torch

    from cream_rt.atomic import atomic_path, write_json
    from cream_rt.benchmark.machine import command_line, machine_info
    torch.set_num_threads(os.cpu_count() or 1)
    out, work = Path(args.out), Path(args.work)
    record = json.loads(out.read_text()) if out.is_file() else {"cells": {}}
    record["commands"] = list(dict.fromkeys(record.get("commands", []) + [command_line("accuracy", argv)]))
    for name in cell_names(args.cells):
        started = time.time()
        cell = Cell(name, work)
        entry = record["cells"].setdefault(name, {"rows": {}})
        entry.update({"dataset": cell.dataset, "backbone": cell.backbone, "seed": cell.seed,
                      "fit_split": cell.fit_split, "default": cell.default().name(),
                      "unreadable_images": sorted({i for s in cell.splits.values() for i in s.unreadable})})
        rows = entry["rows"]
        if "CAM" not in rows:
            rows["CAM"] = {s: metrics_row(score(None, cell.splits[s], cell.interval)) for s in ("val", "test")}
            oracle_model = cell.fitted(cell.default())
            rows["oracle EM T=1"] = {s: oracle_row(oracle_model, cell.splits[s], cell.interval)
                                     for s in ("val", "test")}
        for setting in settings_named(args.settings, cell):
            if setting.name() not in rows:
                rows[setting.name()] = cell.row(setting)
        for label, setting in (("default", cell.default()), ("previous default", previous(cell.backbone))):
            rows[label] = rows.get(setting.name()) or cell.row(setting)
        if args.tuned and "tuned" not in rows:
            rows["tuned"] = cell.tuned_row()
        if args.int8 and not cell.dataset.startswith("synth-") and "ONNX int8 default" not in rows:
            rows.update(cell.int8_rows(work))
        entry["seconds"] = round(entry.get("seconds", 0) + time.time() - started, 1)
        print(f"{name}: " + "  ".join(f"{n} {r['val']['MaxBoxAccV2']:.1f}/{r['test']['MaxBoxAccV2']:.1f}"
                                      for n, r in rows.items() if n in ("CAM", "default", "tuned")), flush=True)
        summary = summarize(record["cells"])
        backbones = tuple(dict.fromkeys(c["backbone"] for c in record["cells"].values()))
        pairs = [p.split(":") for p in args.rule.split(";") if p]
        changed = [b for b in backbones if previous(b) not in (shipped(b), shipped(b, True))]  # defaults that moved
        rules = [r for row, base in pairs for b in changed if (r := default_rule(summary, row, base, (b,)))]
        record.update({"date": date.today().isoformat(), "machine": machine_info(), "summary": summary,
                       "rule": rules, "real_recipes": REAL_RECIPES,
                       "synth_recipes": {b: dataclasses.asdict(r) for b, r in SYNTH_RECIPES.items()}})
        write_json(out, record)  # after every cell: a long run keeps what it measured
        with atomic_path(out.with_suffix(".md")) as tmp:
            tmp.write_text(markdown(summary, rules, " && ".join(record["commands"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
