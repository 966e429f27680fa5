"""Why CREAM does or does not beat CAM on a data set with masks: how well each map separates the
object from the background at feature resolution. For CAM, for the EM's z_fg started from the
learned embeddings, and for z_fg started from per-image oracle centroids (mean feature inside /
outside the ground-truth mask), prints the mean map value inside the mask and outside it.
If even the oracle centroids do not separate, the features do not represent the whole object
and no EM can re-activate it; if only the learned ones fail, the embeddings are the weak link.
Also prints, for head-like cells (minmax CAM >= 0.5), body cells CAM misses (in the mask, CAM
< tau) and background cells, the mean feature norm and cosine to the learned foreground and
background embeddings: the E-step puts a cell in the foreground where cos_fg - cos_bg > 0.
`python -m cream_rt.bench.separability --checkpoint m.pt --data DATA [--split test] [--images 200] [--json]`"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from cream_rt.metadata import read_split, split_paths
from cream_rt.model.checkpoint import load_checkpoint
from cream_rt.model.em import em_foreground, l2_normalize, minmax
from cream_rt.scoring import split_batches


def inside_outside(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Mean of `maps (B,N)` over pixels mostly inside (> 0.5) and clearly outside (< 0.05) the masks."""
    inside, outside = masks > 0.5, masks < 0.05
    return (float((maps * inside).sum() / inside.sum().clamp(min=1)),
            float((maps * outside).sum() / outside.sum().clamp(min=1)))


def separability(checkpoint: str, data: str, split: str = "test", count: int = 200, batch: int = 50) -> dict:
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    cfg = model.config
    root = Path(data)
    split_dir, images = split_paths(root, split)
    meta = read_split(split_dir)
    meta.image_ids = meta.image_ids[:count]
    beta, unit = cfg.cream.beta, cfg.cream.feature_mean == "unit"
    sums: dict[str, list[float]] = {}
    cells: dict[str, list[float]] = {}
    for chunk, x_np, labels_np in split_batches(meta, images, batch, cfg.input_size, cfg.mean, cfg.std, "separability"):
        x, labels = torch.from_numpy(x_np), torch.from_numpy(labels_np)
        with torch.no_grad():
            features = model.features(x)
            cam = model.cam(features, labels)
            features = model.em_features(features)  # what the EM clusters
        b, k, h, w = features.shape
        masks = torch.from_numpy(np.stack([
            cv2.resize(cv2.imread(str(root / "masks" / i), cv2.IMREAD_GRAYSCALE), (w, h),
                       interpolation=cv2.INTER_AREA) / 255.0 for i in chunk])).float().reshape(b, -1)
        flat = features.reshape(b, k, -1)
        inside, outside = (masks > 0.5).float(), (masks < 0.05).float()
        oracle = torch.stack([(flat * inside[:, None]).sum(2) / inside.sum(1, keepdim=True).clamp(min=1),
                              (flat * outside[:, None]).sum(2) / outside.sum(1, keepdim=True).clamp(min=1)], 1)
        maps = {"cam": minmax(cam.reshape(b, -1), (1,))}
        for t in (1, 2):
            maps[f"z_fg learned T={t}"] = em_foreground(flat, model.embeddings[labels], t, beta, unit)[0]
        maps["z_fg oracle T=1"] = em_foreground(flat, oracle, 1, beta)[0]
        add_cell_stats(cells, flat, maps["cam"], masks, model.embeddings[labels], cfg.cream.tau)
        for name, m in maps.items():
            i, o = inside_outside(m, masks)
            sums.setdefault(name, [0.0, 0.0])
            sums[name][0] += i * b
            sums[name][1] += o * b
    n = len(meta.image_ids)
    result = {name: {"inside": v[0] / n, "outside": v[1] / n} for name, v in sums.items()}
    result["cells"] = {g: {"count": int(v[0]), "norm": v[1] / max(v[0], 1), "cos_fg": v[2] / max(v[0], 1),
                           "cos_bg": v[3] / max(v[0], 1)} for g, v in cells.items()}
    return result


def add_cell_stats(cells: dict[str, list[float]], flat: torch.Tensor, cam: torch.Tensor, masks: torch.Tensor,
                   centroids: torch.Tensor, tau: float) -> None:
    """Accumulate count, feature norm and cosine to each learned embedding per cell group."""
    norm = flat.norm(dim=1)
    cos = torch.einsum("bck,bkn->bcn", l2_normalize(centroids, 2), l2_normalize(flat, 1))
    groups = {"head (CAM >= 0.5)": cam >= 0.5, "body CAM misses": (masks > 0.5) & (cam < tau),
              "background": masks < 0.05}
    for name, sel in groups.items():
        acc = cells.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        acc[0] += float(sel.sum())
        acc[1] += float(norm[sel].sum())
        acc[2] += float(cos[:, 0][sel].sum())
        acc[3] += float(cos[:, 1][sel].sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="data root with images/, masks/, metadata/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = separability(args.checkpoint, args.data, args.split, args.images)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, v in result.items():
            if name != "cells":
                print(f"{name:20s} inside {v['inside']:.3f}  outside {v['outside']:.3f}")
        for name, v in result["cells"].items():
            print(f"{name:20s} cells {v['count']:6d}  norm {v['norm']:.2f}  cos_fg {v['cos_fg']:.3f}  "
                  f"cos_bg {v['cos_bg']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
