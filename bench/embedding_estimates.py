"""Issue 23: how the context embeddings are estimated, on the accuracy suite's trained cells.
Rows (CREAM T=2, the model's other settings): `momentum`, the embeddings the paper's momentum
rule leaves at the end of training (the default before 2026-12-05); `pass`, the embedding pass
(train/refine.py: class means under the CAM's mask over the training split with the final
weights in eval mode) with R refinement rounds; `center`, the same with the feature center
subtracted (`CreamConfig.center`); `default`, the row the shipped defaults give per backbone;
on request (`--rows`), VARIANTS of the default (beta, T, tau, the adaptive start, the EM on an
earlier layer: `em_layer`) and the `class oracle` diagnostic; and CAM and the oracle-centroid EM
(on the CAM's features; a row on another layer also records the oracle on that layer) for
reference. Per row:
MaxBoxAccV2 and the mean cosine of the EM's start to the oracle's per-image centroids (fg, bg).
The embeddings and maps come from the shipped code (`embedding_pass`, `maps_from_features`) on
backbone features computed once per cell and layer and kept in the cell folder as float16.
`default 2026-12-05` is the default before `em_layer` (the EM on the CAM's features).

`python -m cream_rt.bench.embedding_estimates --cells default-efficientnet-lite0-s0,... \\
    --work accuracy_work --out bench/results/embedding_estimates.json`
(`--suite`: every preset x seeds 0,1,2 x small-cnn, efficientnet-lite0; cells are trained first
when missing, as `bench/accuracy.py` trains them; `--append --rows 'class oracle;default T=3'`
adds rows to the cells already scored). The default rule's verdicts and issue 23's targets
are written beside the table."""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from .accuracy import RECIPES, RULE_MEAN_GAIN, RULE_WORST_LOSS, SUITES, default_rule, masks_at, train_cell
from .machine import command_line, machine_info

# name -> (center, refinement rounds); None: the checkpoint's own (momentum) embeddings
ESTIMATES: dict[str, tuple[bool, int] | None] = {
    "momentum": None, "pass": (False, 0), "pass R=1": (False, 1), "pass R=2": (False, 2),
    "center": (True, 0), "center R=1": (True, 1), "center R=2": (True, 2)}
# A diagnostic, not a candidate: the best any class-level start can do. Each class's rows are the
# mean over its test images of the oracle's per-image centroids (ground-truth masks, the
# backbone's default center), with the default EM and calibration.
CLASS_ORACLE = "class oracle"
# Rows scored on request (`--rows`): the shipped estimate per backbone (center None: the
# backbone's default) with other CreamConfig settings, for the EM and the refinement alike.
VARIANTS: dict[str, tuple[bool | None, int, dict]] = {
    "default beta=4": (None, 1, {"beta": 4.0}), "default beta=16": (None, 1, {"beta": 16.0}),
    "default T=1": (None, 1, {"iterations": 1}), "default T=3": (None, 1, {"iterations": 3}),
    "default tau=0.1": (None, 1, {"tau": 0.1}), "default tau=0.35": (None, 1, {"tau": 0.35}),
    "default adapt_bg=0.5": (None, 1, {"adapt_bg": 0.5}), "default adapt_bg=1": (None, 1, {"adapt_bg": 1.0}),
    "default adapt_fg=0.5": (None, 1, {"adapt_fg": 0.5}),
    # the EM on an earlier layer (CreamConfig.em_layer); on a backbone without that layer the
    # row is the default's (each row records the layer it used)
    "center R=1 em_layer=_blocks.5": (True, 1, {"em_layer": "_blocks.5"}),
    "center R=1 em_layer=_blocks.6": (True, 1, {"em_layer": "_blocks.6"}),
    "center R=1 em_layer=_blocks.7": (True, 1, {"em_layer": "_blocks.7"}),
    "pass R=1 em_layer=_blocks.5": (False, 1, {"em_layer": "_blocks.5"}),
    "pass R=1 em_layer=_blocks.6": (False, 1, {"em_layer": "_blocks.6"}),
    "pass R=1 em_layer=_blocks.7": (False, 1, {"em_layer": "_blocks.7"}),
    "pass R=1 em_layer=body.5": (False, 1, {"em_layer": "body.5"}),
    "pass R=1 em_layer=layer3": (False, 1, {"em_layer": "layer3"}),  # ResNet50: not measured here
    "center R=1 em_layer=layer3": (True, 1, {"em_layer": "layer3"}),
    CLASS_ORACLE: (None, 0, {})}
BASELINE = "momentum"
DEFAULT_ROW = "default"  # what `cream train` ships, per backbone (`default_estimate`)
PREVIOUS_ROW = "default 2026-12-05"  # what it shipped before em_layer (`previous_estimate`)


def default_estimate(backbone: str) -> str:
    """The row the shipped defaults give on `backbone`: the embedding pass with
    `TrainConfig.refine_rounds` rounds, centered where `BackboneSpec.center`, on the layer of
    `BackboneSpec.em_layer`."""
    from cream_rt.model.backbones import get_backbone
    from cream_rt.model.config import CAM_LAYER
    from cream_rt.train.trainer import TrainConfig

    spec = get_backbone(backbone)
    row = f"{'center' if spec.center else 'pass'} R={TrainConfig().refine_rounds}"
    return row if spec.em_layer == CAM_LAYER else f"{row} em_layer={spec.em_layer}"


def previous_estimate(backbone: str) -> str:
    """The row the defaults of 2026-12-05 gave on `backbone`: the pass with one round on the
    CAM's features, centered where the backbone starts from ImageNet weights."""
    from cream_rt.model.backbones import get_backbone

    return f"{'center' if get_backbone(backbone).pretrained else 'pass'} R=1"


def with_default_row(cell: dict) -> dict:
    """The cell with its `default` row and its PREVIOUS_ROW, copies of the rows those defaults give."""
    rows = cell["rows"]
    return {**cell, "rows": {**rows, DEFAULT_ROW: rows[default_estimate(cell["backbone"])],
                             PREVIOUS_ROW: rows[previous_estimate(cell["backbone"])]}}


def cell_features(model, data: Path, split: str, cache: Path) -> dict:
    """The model's features `(B,K[+K_em],h,w)` (float16 on disk), labels, logits and ids of one split."""
    import torch

    from cream_rt.metadata import read_split, split_paths
    from cream_rt.scoring import split_batches

    if cache.is_file():
        return torch.load(cache, weights_only=True)
    split_dir, images = split_paths(data, split)
    meta = read_split(split_dir, require_localization=split != "train")
    cfg = model.config
    parts: dict[str, list] = {"features": [], "labels": [], "logits": [], "ids": []}
    with torch.no_grad():
        for chunk, x, labels in split_batches(meta, images, 50, cfg.input_size, cfg.mean, cfg.std, split):
            f = model.features(torch.from_numpy(x))
            parts["features"].append(f.half())
            parts["labels"].append(torch.from_numpy(labels))
            parts["logits"].append(model.logits(f))
            parts["ids"] += chunk
    out = {k: torch.cat(v) if k != "ids" else v for k, v in parts.items()}
    torch.save(out, cache)
    return out


def score_estimates(checkpoint: Path, data: Path, only: list[str] | None = None,
                    extra: list[str] | None = None) -> dict:
    """The rows of one cell: with `only`, those rows of ESTIMATES / VARIANTS; else CAM, the
    oracle, every estimate and `extra` (None: every variant).
    {row: {MaxBoxAccV2, GT_known_Loc, start_cos_fg, start_cos_bg[, em_layer, oracle_em_layer]}}."""
    import dataclasses

    import torch

    from cream_rt.metadata import read_split, split_paths
    from cream_rt.model.backbones import get_backbone
    from cream_rt.model.checkpoint import load_checkpoint
    from cream_rt.model.em import centered, em_foreground, l2_normalize, score_maps
    from cream_rt.scoring import SplitScorer
    from cream_rt.train.refine import embedding_pass

    model, _ = load_checkpoint(checkpoint)
    meta = read_split(split_paths(data, "test")[0])
    size = model.config.input_size
    layers: dict[str, tuple] = {}
    layer_oracles: dict[str, float] = {}

    def at_layer(layer: str):
        """(model, train split, test split, its features, its EM features) with the EM on `layer`."""
        if layer not in layers:
            m = model if layer == model.em_layer else model.with_em_layer(layer).eval()
            suffix = "" if m is model else "_" + layer.replace(".", "-")
            tr = cell_features(m, data, "train", checkpoint.parent / f"feats_train{suffix}.pt")
            te = cell_features(m, data, "test", checkpoint.parent / f"feats_test{suffix}.pt")
            feats = te["features"].float()
            layers[layer] = (m, tr, te, feats, m.em_features(feats))
        return layers[layer]

    def layer_oracle(layer: str) -> float:
        """MaxBoxAccV2 of the oracle EM (T=1) on `layer`'s features, once per layer."""
        if layer not in layer_oracles:
            m_em = at_layer(layer)[4]
            z = em_foreground(m_em.flatten(2), oracle(m_em, None), 1, shipped.beta, True)[0]
            layer_oracles[layer] = score(z.reshape(b, h, w) + model.maps_from_features(features, labels, "cam"))[
                "MaxBoxAccV2"]
        return layer_oracles[layer]

    _, _, test, features, em = at_layer(model.em_layer)
    labels = test["labels"]
    b, k, h, w = features.shape
    masks = torch.from_numpy(masks_at(data, test["ids"], h, w)).float()
    inside, outside = (masks > 0.5).float(), (masks < 0.05).float()

    def oracle(em_features, center):
        x = l2_normalize(centered(em_features.flatten(2), center), 1)
        mean = lambda m: (x * m[:, None]).sum(2) / m.sum(1, keepdim=True).clamp(min=1)  # noqa: E731
        return torch.stack([mean(inside), mean(outside)], 1)

    def score(maps) -> dict:
        scorer = SplitScorer(meta, size, 0.01)
        for i in range(0, b, 50):
            scorer.add(test["ids"][i:i + 50], test["logits"][i:i + 50].numpy(),
                       score_maps(maps[i:i + 50], (size, size)).numpy())
        m = scorer.result()
        return {"MaxBoxAccV2": m["MaxBoxAccV2"], "GT_known_Loc": m["GT_known_Loc"]}

    wanted = {name: None if e is None else (*e, {}) for name, e in ESTIMATES.items()}
    wanted.update(VARIANTS if extra is None else {name: VARIANTS[name] for name in extra if name in VARIANTS})
    if only is not None:
        wanted = {name: wanted[name] for name in only}
    shipped = model.config.cream
    spec = get_backbone(model.config.backbone)
    backbone_center = spec.center
    rows = {}
    with torch.no_grad():
        if only is None:
            rows["CAM"] = score(model.maps_from_features(features, labels, "cam"))
            z = em_foreground(em.flatten(2), oracle(em, None), 1, shipped.beta, True)[0]
            rows["oracle EM T=1"] = score(z.reshape(b, h, w) + model.maps_from_features(features, labels, "cam"))
        momentum = model.embeddings.clone()
        for name, estimate in wanted.items():
            center, rounds, overrides = estimate if estimate is not None else (None, 0, {})
            overrides = dict(overrides)
            # estimates on the checkpoint's layer (the suite trains on the CAM's), variants of the
            # default on the backbone's default layer unless they name one
            layer = overrides.pop("em_layer", spec.em_layer if name in VARIANTS else shipped.em_layer)
            if layer not in (shipped.em_layer, *model.backbone.layer_names()):
                layer = shipped.em_layer  # a layer of another backbone: the default's row
            m, train, _, m_features, m_em = at_layer(layer)
            if m is model:
                model.embeddings.copy_(momentum)
            m.config.cream = dataclasses.replace(shipped, center=False, em_layer=layer)
            if estimate is not None:
                m.config.cream = dataclasses.replace(m.config.cream, **overrides)
                real_features = m.features
                m.features = lambda f: f  # the pass reads the cached features
                try:
                    embedding_pass(m, lambda split=train: ((split["features"][i:i + 50].float(),
                                                            split["labels"][i:i + 50])
                                                           for i in range(0, len(split["labels"]), 50)),
                                   backbone_center if center is None else center, rounds)
                finally:
                    m.features = real_features
            if name == CLASS_ORACLE:
                per_image = oracle(m_em, m.center)  # (B,2,K)
                for c in labels.unique():
                    m.embeddings[c] = per_image[labels == c].mean(0)
            row = score(m.maps_from_features(m_features, labels, "cream"))
            cos = (l2_normalize(m.embeddings[labels], 2) * l2_normalize(oracle(m_em, m.center), 2)).sum(2).mean(0)
            row.update(start_cos_fg=float(cos[0]), start_cos_bg=float(cos[1]), em_layer=layer)
            if layer != shipped.em_layer:
                row["oracle_em_layer"] = layer_oracle(layer)
            rows[name] = row
        model.config.cream = shipped
    return rows


def summarize(cells: list[dict]) -> dict:
    """Means over seeds per (preset, backbone), in the shape `accuracy.default_rule` reads."""
    groups: dict[str, list[dict]] = {}
    for cell in map(with_default_row, cells):
        groups.setdefault(f"{cell['preset']}/{cell['backbone']}", []).append(cell)
    return {key: {"seeds": sorted(c["seed"] for c in group),
                  "rows": {name: {m: float(np.mean([c["rows"][name][m] for c in group]))
                                  for m, v in group[0]["rows"][name].items() if not isinstance(v, str)}
                           for name in group[0]["rows"] if all(name in c["rows"] for c in group)}}
            for key, group in groups.items()}


def targets(summary: dict) -> dict:
    """Per cell, issue 23's numbers for the `default` row: its gain over CAM, the oracle's gain
    over CAM, the fraction of it reached, and whether it is >= 5 where the oracle gain is >= 10."""
    out = {}
    for key, s in summary.items():
        cam = s["rows"]["CAM"]["MaxBoxAccV2"]
        gain = s["rows"][DEFAULT_ROW]["MaxBoxAccV2"] - cam
        oracle = s["rows"]["oracle EM T=1"]["MaxBoxAccV2"] - cam
        out[key] = {"gain": gain, "oracle_gain": oracle, "fraction": gain / oracle if oracle >= 5 else None,
                    "meets_5": gain >= 5 if oracle >= 10 else None}
        if CLASS_ORACLE in s["rows"]:
            out[key]["class_oracle_gain"] = s["rows"][CLASS_ORACLE]["MaxBoxAccV2"] - cam
        if "oracle_em_layer" in s["rows"][DEFAULT_ROW]:  # the default's EM runs on another layer
            out[key]["layer_oracle_gain"] = s["rows"][DEFAULT_ROW]["oracle_em_layer"] - cam
    return out


def rule_rows(names: list[str], backbones: tuple[str, ...]) -> list[tuple[str, str]]:
    """(row, baseline) pairs the default rule is applied to: every estimate and the shipped
    default against the momentum embeddings, the default against the pass alone, and each
    variant present against the shipped default."""
    return [(n, BASELINE) for n in (*ESTIMATES, DEFAULT_ROW) if n != BASELINE] + [(DEFAULT_ROW, "pass R=1")] + \
        [(DEFAULT_ROW, PREVIOUS_ROW)] + [(n, DEFAULT_ROW) for n in VARIANTS if n in names and n != CLASS_ORACLE
                                          and n not in {default_estimate(b) for b in backbones}]


def _table(summary: dict, names: list[str], absolute: tuple[str, ...], base_row: str) -> list[str]:
    """One Markdown table: the `absolute` rows as MaxBoxAccV2, the others as the gain over
    `base_row`, with the start's cosines to the oracle's centroids in brackets."""
    lines = ["| cell | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key, s in summary.items():
        base = s["rows"][base_row]["MaxBoxAccV2"]
        cells = []
        for name in names:
            r = s["rows"].get(name)
            if r is None:
                cells.append("")
                continue
            value = f"{r['MaxBoxAccV2']:.1f}" if name in absolute else f"{r['MaxBoxAccV2'] - base:+.1f}"
            if "start_cos_fg" in r:
                value += f" ({r['start_cos_fg']:.2f}/{r['start_cos_bg']:.2f})"
            cells.append(value)
        lines.append(f"| {key} | {','.join(map(str, s['seeds']))} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict, backbones: tuple[str, ...], command: str) -> str:
    names = list(dict.fromkeys(name for s in summary.values() for name in s["rows"]))
    references = ("CAM", "oracle EM T=1", CLASS_ORACLE)
    main = [n for n in references if n in names] + [*ESTIMATES, DEFAULT_ROW]
    lines = [f"<!-- written by: {command} -->",
             "MaxBoxAccV2, CREAM T=2 except CAM and the oracle. CAM, the oracles and `momentum` absolute, the other "
             f"rows as the gain over `{BASELINE}`; brackets: the start's cosine to the oracle's per-image centroids "
             f"(fg/bg). `{CLASS_ORACLE}`: each class's mean of the per-image oracle centroids (test masks), the best "
             "any class-level start can do. Means over the seeds listed.", "",
             *_table(summary, main, (*references, BASELINE), BASELINE)]
    variants = [n for n in VARIANTS if n in names and n != CLASS_ORACLE]
    if variants:
        lines += ["", f"Variants of the shipped default (gain over `{DEFAULT_ROW}`):", "",
                  *_table(summary, [DEFAULT_ROW, *variants], (DEFAULT_ROW,), DEFAULT_ROW)]
    lines += ["", f"Default rule against `{BASELINE}` (>= {RULE_MEAN_GAIN:g} on the mean, no cell below "
                  f"-{RULE_WORST_LOSS:g}, 3 seeds per cell, backbones {', '.join(backbones)}):", "",
              "| row | mean gain | worst cell | cells | verdict |", "|---|---|---|---|---|"]
    for name, baseline in rule_rows(names, backbones):
        v = default_rule(summary, name, baseline, backbones)
        lines.append(f"| {name}{'' if baseline == BASELINE else f' vs {baseline}'} | {v['mean_gain']:+.2f} "
                     f"| {v['worst_cell']} {v['worst_gain']:+.2f} | {v['cells']} | {v['verdict']} |")
    lines += ["", f"`{DEFAULT_ROW}`: " + ", ".join(f"{b}: `{default_estimate(b)}`" for b in backbones)
              + ". Issue 23's targets with it (CREAM T=2 - CAM; oracle gain = oracle EM T=1 - CAM):", "",
              "| cell | CREAM - CAM | oracle gain | fraction | >= CAM + 5 where oracle gain >= 10 "
              "| class oracle - CAM | oracle on the default's EM layer - CAM |",
              "|---|---|---|---|---|---|---|"]
    for key, t in targets(summary).items():
        lines.append(f"| {key} | {t['gain']:+.1f} | {t['oracle_gain']:+.1f} | "
                     f"{'n/a' if t['fraction'] is None else format(t['fraction'], '.2f')} | "
                     f"{'n/a' if t['meets_5'] is None else 'yes' if t['meets_5'] else 'no'} | "
                     f"{format(t['class_oracle_gain'], '+.1f') if 'class_oracle_gain' in t else ''} | "
                     f"{format(t['layer_oracle_gain'], '+.1f') if 'layer_oracle_gain' in t else ''} |")
    for backbone in backbones:
        mine = [t for key, t in targets(summary).items() if key.endswith("/" + backbone)]
        gain, oracle = np.mean([t["gain"] for t in mine]), np.mean([t["oracle_gain"] for t in mine])
        line = (f"\n{backbone}, mean over its {len(mine)} cells: CREAM - CAM {gain:+.1f}, half the oracle gain "
                f"{oracle / 2:+.1f} ({gain / oracle:.2f} of the oracle gain)")
        if all("class_oracle_gain" in t for t in mine):
            best = np.mean([t["class_oracle_gain"] for t in mine])
            line += f"; the class oracle {best:+.1f} ({best / oracle:.2f})"
        lines.append(line + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", help="comma-separated PRESET-BACKBONE-sSEED cells")
    parser.add_argument("--suite", action="store_true", help="every preset x seeds 0,1,2 x both CPU backbones")
    parser.add_argument("--work", default="accuracy_work")
    parser.add_argument("--out", default="bench/results/embedding_estimates.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the cells already in --out (and do not score them again)")
    parser.add_argument("--rows", help="with --append: score these rows (ESTIMATES or VARIANTS names, separated by "
                                       "semicolons) in the cells that lack them")
    parser.add_argument("--backbones", default="small-cnn,efficientnet-lite0",
                        help="comma-separated: the suite's backbones (--suite) and those the default rule needs")
    args = parser.parse_args(argv)
    only = args.rows.split(";") if args.rows else None
    unknown = [n for n in only or [] if n not in ESTIMATES and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; have: {'; '.join([*ESTIMATES, *VARIANTS])}")
    backbones = tuple(args.backbones.split(","))
    if args.suite:
        wanted = [(p, b, s) for s in (0, 1, 2) for b in backbones for p in SUITES["default"]]
    else:
        wanted = []
        for cell in (args.cells or "").split(","):
            head, seed = cell.rsplit("-s", 1)
            backbone = next(b for b in RECIPES if head.endswith("-" + b))
            wanted.append((head[:-len(backbone) - 1], backbone, int(seed)))
    out = Path(args.out)
    cells = json.loads(out.read_text())["cells"] if args.append and out.is_file() else []
    done = {(c["preset"], c["backbone"], c["seed"]): c for c in cells}
    scored = False
    for preset_name, backbone, seed in wanted:
        cell = done.get((preset_name, backbone, seed))
        missing = None if cell is None else [n for n in only or [] if n not in cell["rows"]]
        if cell is not None and not missing:
            continue
        started = time.time()
        ckpt, data = train_cell(preset_name, backbone, seed, Path(args.work))
        if cell is None:  # a new cell: CAM, the oracle, the estimates and the rows asked for (default: all)
            cell = {"preset": preset_name, "backbone": backbone, "seed": seed, "rows": {}}
            cells.append(cell)
            rows = score_estimates(ckpt, data, None, only)
        else:
            rows = score_estimates(ckpt, data, missing)
        cell["rows"].update(rows)
        print(f"{preset_name}-{backbone}-s{seed} ({time.time() - started:.0f} s): "
              + "  ".join(f"{n} {r['MaxBoxAccV2']:.1f}" for n, r in rows.items()), flush=True)
        write(out, cells, backbones, argv)
        scored = True
    if not scored:  # nothing new: the record again, from the cells kept
        write(out, cells, backbones, argv)
    return 0


def write(out: Path, cells: list[dict], backbones: tuple[str, ...], argv: list[str] | None) -> None:
    """The JSON record (cells, means, the default rule's verdicts, issue 23's targets) and its table."""
    summary = summarize(cells)
    command = command_line("embedding_estimates", argv)
    before = json.loads(out.read_text()) if out.is_file() else {}
    commands = before.get("commands", [before["command"]] if "command" in before else [])
    record = {"date": date.today().isoformat(), "commands": list(dict.fromkeys(commands + [command])),
              "machine": machine_info(), "cells": cells, "summary": summary,
              "rule": {f"{n} vs {b}": default_rule(summary, n, b, backbones)
                       for n, b in rule_rows(list(dict.fromkeys(n for s in summary.values() for n in s["rows"])),
                                             backbones)},
              "targets": targets(summary)}
    if "note" in before:  # how earlier commands' rows were renamed or dropped
        record["note"] = before["note"]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    out.with_suffix(".md").write_text(markdown(summary, backbones, command_line("embedding_estimates", argv)))


if __name__ == "__main__":
    raise SystemExit(main())
