"""CREAM's re-activation (docs/method.md section 3.2-3.4): EM over pixel features with a cosine
base model, calibration against the CAM, fusion with the CAM. The one implementation used by
the eager model, the ONNX exporter (T unrolled) and the benchmarks."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..config import CreamConfig

__all__ = ["EPS", "minmax", "l2_normalize", "centered", "em_foreground", "side_means", "adaptive_start",
           "check_fused", "border_weights", "Reactivation", "reactivation", "reactivate",
           "bicubic_matrix", "score_maps", "to_grid", "bilinear_matrix", "grid_mean_weights"]

EPS = 1e-6


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """(x - min) / (max - min) over `dims`; a constant slice becomes all zeros. There x - min is
    0 everywhere, so flooring the span at the dtype's smallest normal number gives the zeros
    with no select (6 nodes fewer per minmax in exported graphs)."""
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    return (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny)


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / (||x|| + EPS) along `dim`: an all-zero vector stays zero (cos 0 to anything)."""
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def centered(features: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """`features (B,K,...)` minus the feature center `(K,)` (`CreamConfig.center`): the training
    split's mean feature, the direction that all cells of a pretrained backbone share, so that
    the cosines of the EM compare what sets cells apart. None: the features as they are."""
    if center is None:
        return features
    return features - center.to(features.dtype).reshape(1, -1, *([1] * (features.dim() - 2)))


def em_foreground(features: torch.Tensor, centroids: torch.Tensor, iterations: int, *, beta: float, unit_mean: bool,
                  m_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """EM with p(x|k) ~ exp(beta cos(x, mu_k)) started from `centroids (B,2,K)`; `features
    (B,K,N)`. T E-steps with an M-step between consecutive ones; returns (z_fg, z_bg) `(B,N)`.
    The M-step averages the raw features, or with `unit_mean` the L2-normalised ones;
    `m_weights (N,)` (0/1) leaves pixels out of the M-step (means and priors).
    Written for few exported nodes, same maths: the softmax over the two components ignores any
    offset common to both, so the first E-step (pi = 0.5, 0.5) adds no prior and later ones use
    log(mass) for log(mass / N). (The M-step keeps its division by the mass: the cosine's EPS is
    not negligible next to the mean of small features.) The normalised features are never
    formed: cos(mu, x_n) = (mu_n . x_n) / (||x_n|| + EPS) scales a `(B,2,N)` product, and the unit
    M-step folds 1 / (||x_n|| + EPS) into the responsibilities, so the `(B,K,N)` map is read by
    the two products only (on an int8 export, one dequantized copy instead of several)."""
    x = features
    # the squared norms as a product with ones: ONNX Runtime's ReduceSum over the channel axis of
    # a (B,K,N) map is a strided reduction, slower there than this GEMV (docs/performance.md)
    ones = torch.ones(1, 1, x.shape[1], dtype=x.dtype, device=x.device)
    inv_norm = 1.0 / (torch.sqrt(torch.matmul(ones, x * x)) + EPS)  # (B,1,N)
    mu = centroids
    n = x.shape[-1]
    log_mass = None  # (B,2,1): log pi_k + log N
    z = torch.empty(0)
    for step in range(iterations):
        logits = torch.bmm(l2_normalize(mu, 2), x) * (beta * inv_norm)  # (B,2,N), log space
        if log_mass is not None:
            logits = logits + log_mass
        z = torch.softmax(logits, dim=1)
        if step < iterations - 1:
            zw = z if m_weights is None else z * m_weights
            mass = zw.sum(dim=2, keepdim=True)  # (B,2,1)
            mu = torch.bmm(zw * inv_norm if unit_mean else zw, x.transpose(1, 2)) / (mass + EPS)
            log_mass = torch.log(torch.clamp(mass, min=EPS * n))  # log(max(pi, EPS)) + log N
    return z[:, 0], z[:, 1]


def side_means(features: torch.Tensor, foreground: torch.Tensor, unit_mean: bool) -> torch.Tensor:
    """`(B,2,K)`: per image, the mean feature (L2-normalised first under `unit_mean`) weighted by
    `foreground (B,N)` and by `1 - foreground`. With a 0/1 mask these are the side means of the
    embedding update (3.1); with responsibilities, their soft form. An empty side gives zeros.
    `features (B,K,N)`."""
    x = l2_normalize(features, 1) if unit_mean else features
    weights = torch.stack([foreground, 1 - foreground], 1).to(x.dtype)  # (B,2,N)
    return torch.bmm(weights, x.transpose(1, 2)) / weights.sum(2, keepdim=True).clamp_min(EPS)


def adaptive_start(features: torch.Tensor, cam_n: torch.Tensor, centroids: torch.Tensor, *, tau: float,
                   unit_mean: bool, adapt_fg: float, adapt_bg: float) -> torch.Tensor:
    """The EM's start `(B,2,K)`: each class embedding mixed with this image's own mean feature on
    its side of the CAM, `(1 - a) V + a f` with f the mean (L2-normalised under `unit_mean`)
    feature over {minmax(CAM) >= tau} (foreground, weight `adapt_fg`) or the rest (background,
    `adapt_bg`): the target the embedding update of 3.1 would move V towards for this image.
    `features (B,K,N)`, `cam_n (B,N)`; an empty side keeps its share of V only."""
    means = side_means(features, (cam_n >= tau).to(features.dtype), unit_mean)
    weights = torch.tensor([adapt_fg, adapt_bg], dtype=means.dtype, device=means.device).reshape(1, 2, 1)
    return (1 - weights) * centroids + weights * means


def check_fused(settings: CreamConfig) -> None:
    """CreamError where the fused cosine-EM op cannot compute this re-activation: it implements
    every calibration on the feature grid with every cell in the M-step."""
    if settings.border or settings.upsample != 1:
        from ..errors import CreamError

        raise CreamError(f"the fused cosine-EM op implements border 0 and upsample 1 only "
                         f"(this model: border {settings.border}, upsample {settings.upsample})")


def border_weights(h: int, w: int, rings: int) -> torch.Tensor:
    """`(h*w,)` float32: 0 on the outer `rings` rings of feature cells, 1 inside (a constant)."""
    keep = np.zeros((h, w), np.float32)
    if h > 2 * rings and w > 2 * rings:
        keep[rings:h - rings, rings:w - rings] = 1.0
    return torch.from_numpy(keep.reshape(-1))


class Reactivation(NamedTuple):
    """What `reactivation` computes: the final map `(B,h,w)`, the calibrated responsibilities
    z~ `(B,N)` and whether the calibration kept the foreground component `(B,1)`."""

    map: torch.Tensor
    calibrated: torch.Tensor
    keep_fg: torch.Tensor


def _steps(settings: CreamConfig, iterations: int | None) -> int:
    t = settings.iterations if iterations is None else iterations
    if t is None:
        raise ValueError("iterations: neither given nor set in the settings (a built model's config has them)")
    return t


def reactivation(features: torch.Tensor, cam: torch.Tensor, centroids: torch.Tensor,
                 settings: CreamConfig | None = None, *, iterations: int | None = None,
                 center: torch.Tensor | None = None) -> Reactivation:
    """CREAM's re-activation with its parts (torch ops, exportable), T >= 1 (see `reactivate`).

    EM from `centroids (B,2,K)`, then calibration (`settings.calibration`: "cam-mean", "omega" or
    "none", docs/method.md 3.3), then fusion with minmax(CAM). With `upsample` > 1 all of it runs
    on features and CAM bilinearly upsampled by that factor (border rings then count upsampled
    cells); `border` rings stay out of the M-step and the calibration region; `adapt_*` start the
    EM from the embeddings mixed with the image's own side means (`adaptive_start`)."""
    c = settings or CreamConfig()
    t = _steps(c, iterations)
    if c.upsample > 1:
        features = torch.nn.functional.interpolate(features, scale_factor=c.upsample, mode="bilinear",
                                                   align_corners=False)
        cam = torch.nn.functional.interpolate(cam.reshape(features.shape[0], 1, *cam.shape[-2:]),
                                              scale_factor=c.upsample, mode="bilinear", align_corners=False)
    b, k, h, w = features.shape
    unit = c.feature_mean == "unit"
    cam_n = minmax(cam.reshape(b, h * w), (1,))
    m_weights = border_weights(h, w, c.border).to(features.device) if c.border > 0 else None
    flat = centered(features.reshape(b, k, h * w).float(), center)
    if c.adapt_fg or c.adapt_bg:
        centroids = adaptive_start(flat, cam_n, centroids.float(), tau=c.tau, unit_mean=unit, adapt_fg=c.adapt_fg,
                                   adapt_bg=c.adapt_bg)
    z_fg, z_bg = em_foreground(flat, centroids.float(), t, beta=c.beta, unit_mean=unit, m_weights=m_weights)
    if c.calibration == "none":
        keep_fg = torch.ones(b, 1, dtype=torch.bool, device=features.device)
    elif c.calibration == "cam-mean":  # the component whose responsibility-weighted mean CAM is higher
        weights = torch.stack([z_fg, z_bg], 1)  # (B,2,N)
        if m_weights is not None:
            weights = weights * m_weights
        level = (weights * cam_n.unsqueeze(1)).sum(2) / (weights.sum(2) + EPS)  # (B,2)
        keep_fg = level[:, :1] >= level[:, 1:]
    else:  # "omega" (CreamConfig admits no other value)
        in_omega = cam_n >= c.tau if m_weights is None else (cam_n >= c.tau) & (m_weights > 0)
        keep_fg = torch.where(in_omega, z_fg - z_bg, 0.0).sum(dim=1, keepdim=True) >= 0  # s_fg >= s_bg over omega
    calibrated = torch.where(keep_fg, z_fg, z_bg)
    return Reactivation((calibrated + cam_n).reshape(b, h, w), calibrated, keep_fg)


def reactivate(features: torch.Tensor, cam: torch.Tensor, centroids: torch.Tensor,
               settings: CreamConfig | None = None, *, iterations: int | None = None, fused: bool = False,
               center: torch.Tensor | None = None) -> torch.Tensor:
    """CREAM's final map `z~ + minmax(CAM)` at feature resolution (docs/method.md 3.2-3.4).

    Args:
        features: `(B,K,h,w)` pixel features (after the ReLU).
        cam: `(B,h,w)` CAM of the chosen class.
        centroids: `(B,2,K)` the class's context embeddings (row 0 foreground, 1 background).
        settings: beta, tau, feature mean, calibration and the named deviations (default: `CreamConfig()`).
        iterations: E-steps T (default: `settings.iterations`); 0 returns `minmax(CAM)` (plain CAM).
        fused: run EM, calibration and fusion in the C++/CUDA op `cream::cosine_em` (reads the
            features once per EM step; implements border 0 and upsample 1, every calibration).
        center: `(K,)` feature center subtracted before the EM (`CreamConfig.center`), or None.
    Returns:
        `(B,h,w)` float maps with values in [0, 2] (`upsample` times finer with `upsample`).

    Example:
        >>> maps = reactivate(torch.rand(2, 8, 7, 7), torch.rand(2, 7, 7), torch.rand(2, 2, 8), iterations=2)
        >>> tuple(maps.shape)
        (2, 7, 7)
    """
    c = settings or CreamConfig()
    t = _steps(c, iterations)
    b, k, h, w = features.shape
    if t <= 0:
        return minmax(cam.reshape(b, h * w), (1,)).reshape(b, h, w)
    if not fused:
        return reactivation(features, cam, centroids, c, iterations=t, center=center).map
    check_fused(c)
    from .fused import cosine_em

    unit = c.feature_mean == "unit"
    features = centered(features.float(), center)  # the op clusters whatever features it is given
    if c.adapt_fg or c.adapt_bg:  # the op takes any start: computed here, in torch
        cam_n = minmax(cam.reshape(b, h * w).float(), (1,))
        centroids = adaptive_start(features.reshape(b, k, h * w), cam_n, centroids.float(), tau=c.tau, unit_mean=unit,
                                   adapt_fg=c.adapt_fg, adapt_bg=c.adapt_bg)
    return cosine_em(features, cam.reshape(b, h, w).float(), centroids.float(), t, float(c.beta), float(c.tau),
                     unit, c.calibration)


def to_grid(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """`(B,C,h,w)` (or `(B,h,w)`) bilinearly resized (align_corners=False) to `size` cells: the
    CAM (or its features) on the grid of a finer EM layer. Linear, so resizing the features and
    then taking the CAM equals taking the CAM and resizing it."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    flat = maps.dim() == 3
    out = torch.nn.functional.interpolate(maps.unsqueeze(1) if flat else maps, size=tuple(size), mode="bilinear",
                                          align_corners=False)
    return out.squeeze(1) if flat else out


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """`A (out, in)` float64 with `A @ v` = the 1-D bilinear resize of v as PyTorch computes it
    (`to_grid`): align_corners=False, source = (dst + 0.5) * in/out - 0.5 floored at 0, the
    upper tap clamped to the border."""
    a = np.zeros((out_size, in_size), np.float64)
    for dst in range(out_size):
        src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(int(np.floor(src)), in_size - 1)
        frac = src - low
        a[dst, low] += 1 - frac
        a[dst, min(low + 1, in_size - 1)] += frac
    return a


@functools.lru_cache(maxsize=32)
def _grid_mean_weights(size: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    parts = []
    for out_size, in_size in zip(size, grid):
        a = bilinear_matrix(out_size, in_size)  # full column rank: a^T x = 1 has the least-norm solution below
        parts.append(a @ np.linalg.solve(a.T @ a, np.ones(in_size)) / in_size)
    return np.outer(parts[0], parts[1]).reshape(-1).astype(np.float32)


def grid_mean_weights(size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """`(H*W,)` float32 weights `w` with `sum(w * to_grid(F, size))` = mean(F) for every `F` on
    `grid`: global average pooling of the original grid read off the resized one (exact in exact
    arithmetic), so that a classifier keeps its logits when its features are resized. NumPy and
    cached, a constant in exported graphs."""
    return torch.from_numpy(_grid_mean_weights(tuple(map(int, size)), tuple(map(int, grid))))


@functools.lru_cache(maxsize=32)
def _bicubic_weights(out_size: int, in_size: int) -> np.ndarray:
    """`U (out, in)` float32 with `U @ v` = the 1-D bicubic resize of v as PyTorch (and OpenCV
    INTER_CUBIC) compute it: align_corners=False, source = (dst + 0.5) * in/out - 0.5, cubic
    convolution A = -0.75 on taps floor-1..floor+2, taps clamped to the border. NumPy, so that
    the cache never holds a tensor created under tracing."""
    a = -0.75
    u = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = (dst + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for tap, x in zip(range(base - 1, base + 3), (1 + t, t, 1 - t, 2 - t)):
            if x <= 1:
                w = ((a + 2) * x - (a + 3)) * x * x + 1
            else:
                w = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
            u[dst, min(max(tap, 0), in_size - 1)] += w
    return u.astype(np.float32)


def bicubic_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """The bicubic resize matrix as a tensor (a constant in exported graphs)."""
    return torch.from_numpy(_bicubic_weights(out_size, in_size))


def score_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Feature-resolution maps `(B,h,w)` -> bicubic (align_corners=False, as OpenCV
    INTER_CUBIC) to the input size -> minmax per image: the evaluated score maps in [0,1].
    Bicubic resizing is linear and separable, so it is `U_h @ M @ U_w^T` with constant
    matrices: two small MatMuls in the exported graph, much cheaper than ONNX Runtime's cubic
    Resize (docs/performance.md)."""
    h, w = maps.shape[-2:]
    u_h = bicubic_matrix(int(size[0]), int(h)).to(maps.device)
    u_w = bicubic_matrix(int(size[1]), int(w)).to(maps.device)
    up = torch.matmul(torch.matmul(u_h, maps), u_w.t())
    return minmax(up, (1, 2))
