"""`cream tune`: CREAM's inference settings chosen on a val split with boxes (wsolevaluation's
few-box validation protocol): the EM layer, the feature center, T, the feature mean, per-class
or class-agnostic embeddings, the fallback, and the box threshold `cream localize` uses. The
features of every candidate layer are computed once per split (one backbone pass); a setting
re-fits the embeddings from those features with the shipped embedding pass (`split_pass`).
The accuracy suite's real cells use the same pieces."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cream_rt.config import CAM_LAYER, EMBEDDINGS, FALLBACKS, FEATURE_MEANS, CreamConfig
from cream_rt.errors import CreamError
from cream_rt.metadata import SplitMetadata
from cream_rt.model.em import minmax, score_maps, to_grid
from cream_rt.model.network import CamModel, em_grid_ok
from cream_rt.progress import progress
from cream_rt.scoring import SplitScorer, split_batches
from cream_rt.unreadable import UnreadableImages

from .refine import split_pass

__all__ = ["Setting", "CachedSplit", "cache_split", "candidate_layers", "grid", "fitted_model", "add_maps", "score",
           "score_settings", "select", "tune", "staged", "tune_checkpoint"]


_DEFAULT = CreamConfig()  # the settings a Setting leaves out


@dataclass(frozen=True)
class Setting:
    """One combination of the inference settings `cream tune` chooses between."""

    em_layer: str
    center: bool
    iterations: int
    feature_mean: str = _DEFAULT.feature_mean
    embeddings: str = _DEFAULT.embeddings
    fallback: str = _DEFAULT.fallback

    @classmethod
    def of(cls, model: CamModel) -> "Setting":
        """The settings `model` has."""
        c = model.config.cream
        return cls(model.em_layer, bool(c.center), int(c.iterations or 0), c.feature_mean, c.embeddings, c.fallback)

    def name(self) -> str:
        parts = [self.em_layer, "center" if self.center else "no center", f"T={self.iterations}"]
        d = _DEFAULT
        parts += [p for p, default in ((self.feature_mean, d.feature_mean), (self.embeddings, d.embeddings),
                                       (f"fallback {self.fallback}", f"fallback {d.fallback}")) if p != default]
        return ", ".join(parts)


@dataclass
class CachedSplit:
    """One split from one backbone pass: ids, labels, logits `(N,C)`, the CAM of each image's
    label `(N,h,w)`, and each wanted layer's features `(N,K,h,w)` (float16). `unreadable`: the
    ids that could not be decoded (a miss when the split is scored)."""

    meta: SplitMetadata
    ids: list[str]
    labels: torch.Tensor
    logits: np.ndarray
    cam: torch.Tensor
    layers: dict[str, torch.Tensor]
    unreadable: list[str]
    input_size: int

    def em_batches(self, layer: str, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(EM features, CAM on their grid, labels) chunks of `layer`, the input of `split_pass`
        (re-iterable)."""
        feats = self.layers[layer]
        return [(feats[i:i + size].float(), self.cam_on(layer, slice(i, i + size)), self.labels[i:i + size])
                for i in range(0, len(self.ids), size)]

    def cam_on(self, layer: str, rows: slice) -> torch.Tensor:
        """The CAM of `rows` on `layer`'s grid (resized where the layer is finer, as the model does)."""
        return to_grid(self.cam[rows], self.layers[layer].shape[-2:])

    def subset(self, rows: list[int]) -> "CachedSplit":
        """The same split restricted to the cached rows `rows` (no unreadable images)."""
        index = torch.tensor(rows, dtype=torch.long)
        return dataclasses.replace(self, ids=[self.ids[i] for i in rows], labels=self.labels[index],
                                   logits=self.logits[rows], cam=self.cam[index],
                                   layers={k: v[index] for k, v in self.layers.items()}, unreadable=[])


def candidate_layers(model: CamModel) -> list[str]:
    """The layers the EM can cluster: every backbone step at the CAM's grid or one stride-2 step
    finer (`em_grid_ok`), and "cam"."""
    shapes = model.backbone.layer_shapes(model.config.input_size)
    return [name for name, _, h, w in shapes[:-1] if em_grid_ok((h, w), shapes[-1][2:])] + [CAM_LAYER]


@torch.no_grad()
def cache_split(model: CamModel, meta: SplitMetadata, image_root: Path, layers: Iterable[str], batch_size: int,
                unreadable: UnreadableImages, desc: str, device: str = "cpu",
                keep: Callable[[list[str]], list[str]] | None = None) -> CachedSplit:
    """One backbone pass over the split (evaluation transform), keeping the features of `layers`
    ("cam": the CAM's own). `keep(ids)`: the ids to use (default all; a subsample that fits)."""
    if keep is not None:
        meta = dataclasses.replace(meta, image_ids=keep(meta.image_ids))
    wanted = set(layers) - {CAM_LAYER}
    cfg = model.config
    parts: dict[str, list] = {name: [] for name in layers}
    ids: list[str] = []
    labels: list[torch.Tensor] = []
    logits: list[np.ndarray] = []
    cams: list[torch.Tensor] = []
    model.eval()
    before = set(unreadable.reasons)
    for chunk, x, y in split_batches(meta, image_root, batch_size, cfg.input_size, cfg.mean, cfg.std, desc,
                                     unreadable):
        images, targets = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        out, tapped = model.backbone.forward_taps(images, wanted)
        tapped[CAM_LAYER] = out
        for name in layers:
            parts[name].append(tapped[name].half().cpu())
        logits.append(model.classifier(out.mean((2, 3))).float().cpu().numpy())
        cams.append(model.cam(out, targets).cpu())
        ids += chunk
        labels.append(targets.cpu())
    missing = [i for i in meta.image_ids if i in unreadable.reasons and i not in before]
    if not ids:
        raise CreamError(f"{meta.root}: no readable image in the split")
    return CachedSplit(meta, ids, torch.cat(labels), np.concatenate(logits), torch.cat(cams),
                       {name: torch.cat(v) for name, v in parts.items()}, missing, cfg.input_size)


def grid(layers: Iterable[str], centers: Iterable[bool], iterations: Iterable[int],
         feature_means: Iterable[str] = FEATURE_MEANS, embeddings: Iterable[str] = EMBEDDINGS,
         fallbacks: Iterable[str] = FALLBACKS) -> list[Setting]:
    """Every combination; the fallback only varies with per-class embeddings (agnostic ones use
    one pair for all)."""
    out = []
    for layer, center, t, mean, emb in itertools.product(layers, centers, iterations, feature_means, embeddings):
        for fallback in (fallbacks if emb == "per-class" else (next(iter(fallbacks)),)):
            out.append(Setting(layer, center, t, mean, emb, fallback))
    return out


def fitted_model(model: CamModel, fit: CachedSplit, setting: Setting, rounds: int) -> CamModel:
    """A new model with `model`'s weights and `setting`'s EM, its embeddings fitted on `fit` (the
    embedding pass with `rounds` refinement rounds, from the cached features: no backbone pass)."""
    m = model.with_em_layer(setting.em_layer).eval()  # a place named by stage resolves to its layer
    m.config = m.config.with_cream(iterations=setting.iterations, feature_mean=setting.feature_mean,
                                   embeddings=setting.embeddings, fallback=setting.fallback)
    split_pass(m, fit.em_batches(m.em_layer), setting.center, rounds, quiet=True)
    return m


@torch.no_grad()
def add_maps(scorer: SplitScorer, model: CamModel | None, split: CachedSplit, iterations: int | None = None) -> None:
    """Score `model`'s CREAM maps on a cached split into `scorer` (None: CAM's maps), its
    unreadable images counted as misses."""
    for image_id in split.unreadable:
        scorer.add_unreadable(image_id)
    size = (split.input_size, split.input_size)
    for i in range(0, len(split.ids), 64):
        if model is None:
            cam = split.cam[i:i + 64]
            maps = minmax(cam.flatten(1), (1,)).reshape(cam.shape)
        else:
            em = split.layers[model.em_layer][i:i + 64].float()
            maps = model.reactivation(em, split.cam_on(model.em_layer, slice(i, i + 64)), split.labels[i:i + 64],
                                      iterations).map
        scorer.add(split.ids[i:i + 64], split.logits[i:i + 64], score_maps(maps, size).numpy())


def score(model: CamModel | None, split: CachedSplit, interval: float = 0.01, iterations: int | None = None) -> dict:
    """wsolevaluation metrics of `model`'s CREAM maps on a cached split (None: CAM's maps)."""
    scorer = SplitScorer(split.meta, split.input_size, interval)
    add_maps(scorer, model, split, iterations)
    return scorer.result()


def cross_fitted_score(model: CamModel, split: CachedSplit, setting: Setting, rounds: int,
                       interval: float = 0.01) -> dict:
    """`setting`'s metrics on a split its embeddings are also fitted on, two-fold: fitted on every
    other photo and scored on the rest, then the other way, pooled, so that no photo is scored
    by embeddings fitted on it (scoring on the fitting photos would favour settings that
    memorise them)."""
    halves = [list(range(0, len(split.ids), 2)), list(range(1, len(split.ids), 2))]
    scorer = SplitScorer(split.meta, split.input_size, interval)
    for image_id in split.unreadable:
        scorer.add_unreadable(image_id)
    for fit_rows, score_rows in (halves, halves[::-1]):
        add_maps(scorer, fitted_model(model, split.subset(fit_rows), setting, rounds), split.subset(score_rows))
    return scorer.result()


def min_gain_for(val: CachedSplit) -> float:
    """How much better on val a setting must be to replace the model's own: one image's worth at
    every IoU threshold (100 / val images; less let 36 val photos pick noise), at least 1 point."""
    return max(1.0, 100.0 / max(len(val.ids) + len(val.unreadable), 1))


def select(rows: list[dict], default: Setting, min_gain: float = 0.0) -> dict:
    """The row with the best val MaxBoxAccV2, unless it beats the `default` row by less than
    `min_gain` (then the default's); on a tie the default, then the earlier row."""
    own = next(r for r in rows if r["setting"] == dataclasses.asdict(default))
    best = max(rows, key=lambda r: (round(r["MaxBoxAccV2"], 6), r is own))
    # rounded like the ranking: rows equal to 1e-6 are one score (sums of image counts in another order)
    return best if round(best["MaxBoxAccV2"], 6) >= round(own["MaxBoxAccV2"] + min_gain, 6) else own


def score_settings(model: CamModel, fit: CachedSplit, val: CachedSplit, settings: list[Setting], rounds: int,
                   interval: float, desc: str) -> list[dict]:
    """Per setting (embeddings fitted on `fit`; two-fold where `fit` is `val`): its val
    MaxBoxAccV2, GT-known Loc and box thresholds."""
    rows = []
    for setting in progress(settings, desc, unit="setting"):
        metrics = (cross_fitted_score(model, val, setting, rounds, interval) if fit is val else
                   score(fitted_model(model, fit, setting, rounds), val, interval))
        rows.append({"setting": dataclasses.asdict(setting), "name": setting.name(),
                     "MaxBoxAccV2": metrics["MaxBoxAccV2"], "GT_known_Loc": metrics["GT_known_Loc"],
                     "MaxBoxAcc_threshold": metrics["MaxBoxAcc_threshold"],
                     "MaxBoxAccV2_thresholds": metrics["MaxBoxAccV2_thresholds"]})
    return rows


def tune(model: CamModel, fit: CachedSplit, val: CachedSplit, settings: list[Setting], rounds: int,
         interval: float = 0.01, desc: str = "tune", min_gain: float | None = None) -> dict:
    """Score the model's own setting and every one of `settings` on `val` (`score_settings`);
    returns {"rows", "best", "cam", "default", "min_gain"}: "best" as `select` picks it
    (min_gain None: `min_gain_for(val)`)."""
    default = Setting.of(model)
    rows = score_settings(model, fit, val, list(dict.fromkeys([default, *settings])), rounds, interval, desc)
    cam = score(None, val, interval)
    default_row = next(r for r in rows if r["setting"] == dataclasses.asdict(default))
    min_gain = min_gain_for(val) if min_gain is None else min_gain
    return {"rows": rows, "best": select(rows, default, min_gain), "default": default_row, "min_gain": min_gain,
            "cam": {"MaxBoxAccV2": cam["MaxBoxAccV2"], "GT_known_Loc": cam["GT_known_Loc"],
                    "MaxBoxAcc_threshold": cam["MaxBoxAcc_threshold"]}}


def staged(model: CamModel, layers: list[str], iterations: Iterable[int], fit: CachedSplit, val: CachedSplit,
           rounds: int, interval: float, top: int = 3, min_gain: float | None = None) -> dict:
    """The staged search: every layer x center at the model's other settings, then T, the feature
    mean and the embeddings around the `top` best (layer, center) pairs, and the fallback too
    where val has classes the fit split lacks (as each half of a two-fold score does). Returns
    `tune`'s result over both stages."""
    base = Setting.of(model)
    first = tune(model, fit, val, [dataclasses.replace(base, em_layer=layer, center=center)
                                   for layer in layers for center in (False, True)], rounds, interval, "tune: layers",
                 min_gain)
    ranked = sorted(first["rows"], key=lambda r: -r["MaxBoxAccV2"])
    pairs = list(dict.fromkeys((r["setting"]["em_layer"], r["setting"]["center"]) for r in ranked))[:top]
    unfitted = fit is val or set(val.labels.tolist()) - set(fit.labels.tolist())  # two-fold: a half lacks classes
    fallbacks = FALLBACKS if unfitted else (base.fallback,)
    second = [s for layer, center in pairs for s in grid([layer], [center], iterations, FEATURE_MEANS, EMBEDDINGS,
                                                           fallbacks)]
    done = {Setting(**r["setting"]) for r in first["rows"]}
    rows = first["rows"] + score_settings(model, fit, val, [s for s in second if s not in done], rounds, interval,
                                          "tune: settings")
    return {**first, "rows": rows, "best": select(rows, base, first["min_gain"])}


def fit_sample(meta: SplitMetadata, limit: int, seed: int = 0) -> Callable[[list[str]], list[str]] | None:
    """Where the fit split has more than `limit` images: a keep function drawing `limit` of them,
    every class represented as evenly as it can be (seeded); None where it fits whole."""
    if len(meta.image_ids) <= limit:
        return None

    def keep(ids: list[str]) -> list[str]:
        rank: dict[str, int] = {}  # in a seeded order, each class's k-th image ranks k
        count: dict[int, int] = {}
        for i in np.random.default_rng(seed).permutation(ids).tolist():
            label = meta.class_labels[i]
            rank[i] = count[label] = count.get(label, 0) + 1
        chosen = set(sorted(rank, key=rank.__getitem__)[:limit])  # stable: ties keep the seeded order
        return [i for i in ids if i in chosen]
    return keep


def tune_checkpoint(checkpoint: str, image_root: Path, meta_root: Path, out: str, *, fit_split: str = "train",
                    val_split: str = "val", layers: list[str] | None = None, iterations: Iterable[int] = (1, 2, 3),
                    search: str = "staged", rounds: int = 1, interval: float = 0.01, cache_bytes: float = 4e9,
                    batch_size: int = 32, device: str = "cpu", max_bad_images: int = 10,
                    min_gain: float | None = None) -> dict:
    """`cream tune`: choose the settings on `val_split`, fit the chosen embeddings on `fit_split`
    (all of it, where the search drew a sample that fits `cache_bytes`), and write the checkpoint
    with the settings, `box_threshold` (the chosen setting's best MaxBoxAcc threshold on val) and
    the record in `config.tuned`; a setting replaces the checkpoint's own only when it is
    `min_gain` better on val (None: `min_gain_for`). With `fit_split` = `val_split` (the disjoint
    protocol) val is scored two-fold (`cross_fitted_score`) and the chosen embeddings are fitted
    on all of it. Returns the record (the table under "rows")."""
    from cream_rt.model.checkpoint import load_checkpoint, save_checkpoint

    model, payload = load_checkpoint(checkpoint)
    chosen, record = tune_model(model, image_root, meta_root, fit_split=fit_split, val_split=val_split, layers=layers,
                                iterations=iterations, search=search, rounds=rounds, interval=interval,
                                cache_bytes=cache_bytes, batch_size=batch_size, device=device,
                                max_bad_images=max_bad_images, min_gain=min_gain, label=checkpoint)
    unreadable = record.pop("_unreadable")
    training = dict(payload.get("training", {}))
    training["tune"] = {**{k: v for k, v in record.items() if k != "checkpoint"}, "from": str(checkpoint)}
    save_checkpoint(out, chosen, training)
    unreadable.warn("tune")
    return {**record, "checkpoint": str(out)}


def tune_model(model: CamModel, image_root: Path, meta_root: Path, *, fit_split: str = "train",
               val_split: str = "val", layers: list[str] | None = None, iterations: Iterable[int] = (1, 2, 3),
               search: str = "staged", rounds: int = 1, interval: float = 0.01, cache_bytes: float = 4e9,
               batch_size: int = 32, device: str = "cpu", max_bad_images: int = 10,
               min_gain: float | None = None, label: str = "model") -> tuple[CamModel, dict]:
    """`tune_checkpoint` on a model in memory: (the tuned model, its record with the table under
    "rows" and the split's unreadable images under "_unreadable")."""
    from cream_rt.metadata import read_split
    from cream_rt.scoring import check_labels

    from .refine import embedding_pass
    from .trainer import split_batches_of

    model.to(device).eval()
    fit_meta = read_split(meta_root / fit_split, require_localization=False)
    val_meta = read_split(meta_root / val_split)
    for meta in (fit_meta, val_meta):
        check_labels(meta, model.config.num_classes, label)
    known = candidate_layers(model)
    layers = [layer if layer == CAM_LAYER else model.backbone.resolve_layer(layer) for layer in layers or known]
    bad = next((layer for layer in layers if layer not in known), None)
    if bad is not None:
        raise CreamError(f"--layers {bad}: not an EM layer of {model.config.backbone} (the CAM's grid or one "
                         f"stride-2 step finer); "
                         f"expected some of {', '.join(known)}")
    unreadable = UnreadableImages(max_bad_images)
    cells = {name: k * h * w for name, k, h, w in model.backbone.layer_shapes(model.config.input_size)}
    cells[CAM_LAYER] = cells[model.backbone.layer_names()[-1]]  # the last step's: the CAM's features
    cached = list(dict.fromkeys([*layers, model.em_layer]))  # the model's own setting is always scored
    per_image = 2 * sum(cells[layer] for layer in cached)  # float16 bytes of an image's cached features
    limit = max(1, int(cache_bytes // per_image) - len(val_meta.image_ids))
    keep = None if fit_split == val_split else fit_sample(fit_meta, limit)
    val = cache_split(model, val_meta, image_root, cached, batch_size, unreadable, f"features {val_split}", device)
    fit = val if fit_split == val_split else cache_split(model, fit_meta, image_root, cached, batch_size, unreadable,
                                                         f"features {fit_split}", device, keep)
    if search == "full":
        result = tune(model, fit, val, grid(layers, (False, True), iterations), rounds, interval, min_gain=min_gain)
    else:
        result = staged(model, layers, iterations, fit, val, rounds, interval, min_gain=min_gain)
    best = Setting(**result["best"]["setting"])
    chosen = fitted_model(model, fit, best, rounds)
    if keep is not None:  # the search saw a sample: the chosen embeddings from the whole split
        embedding_pass(chosen, split_batches_of(chosen, fit_meta, image_root, batch_size, device, "embedding pass",
                                              unreadable), best.center, rounds)
    record = {"setting": result["best"]["setting"], "name": result["best"]["name"],
              "val": {k: result["best"][k] for k in ("MaxBoxAccV2", "GT_known_Loc", "MaxBoxAccV2_thresholds")},
              "val_default": {"name": result["default"]["name"], "MaxBoxAccV2": result["default"]["MaxBoxAccV2"]},
              "val_cam": result["cam"], "box_threshold": result["best"]["MaxBoxAcc_threshold"],
              "fit_split": str(meta_root / fit_split), "fit_images": len(fit.ids),
              "val_split": str(meta_root / val_split), "val_images": len(val_meta.image_ids),
              "settings_scored": len(result["rows"]), "refine_rounds": rounds, "min_gain": result["min_gain"],
              "unreadable_images": unreadable.record()}
    chosen.config = dataclasses.replace(chosen.config, box_threshold=record["box_threshold"],
                                        tuned={k: v for k, v in record.items() if k != "unreadable_images"})
    return chosen, {**record, "rows": result["rows"], "_unreadable": unreadable}
