"""Boxes from score maps with the exact semantics of the wsolevaluation protocol, and IoU.

Protocol (../shared/spec/evaluation.md): `img = uint8(map * 255)` (in the map's dtype),
`thr = int(tau * max(img))`, foreground = `img > thr`, OpenCV contours (RETR_TREE, holes
included), box `[x, y, min(x+w, W-1), min(y+h, H-1)]` of each contour's bounding rect.

Two implementations of the same function:
- `boxes_at_threshold`: OpenCV at one threshold (the runtime's path, and the evaluator's
  fallback when numba is missing);
- `sweep_levels`: every uint8 level in one pass. The contours' bounding rects are derived
  from connected components: an outer contour's rect is its 8-connected foreground
  component's bounding box; a hole contour's rect is the bounding box of a 4-connected
  background component that does not touch the image border, grown by one pixel. Two
  union-find sweeps (foreground by decreasing value, background by increasing value) give
  every level's boxes. The largest-contour rule (MaxBoxAcc v1) needs contour areas, which
  only OpenCV gives, so levels with two or more foreground components fall back to it.
The tests check both against a plain per-threshold reference on adversarial maps.
"""
from __future__ import annotations

import cv2
import numpy as np

try:  # numba is the `fast` extra; without it the evaluator uses OpenCV per level.
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on minimal installs
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn

NO_BOX = np.zeros((1, 4), dtype=np.int64)


def quantize(scoremap: np.ndarray) -> np.ndarray:
    """`uint8(map * 255)` computed in the map's own dtype, as wsolevaluation does."""
    return (scoremap * 255).astype(np.uint8)


def threshold_levels(img_max: int, thresholds: np.ndarray) -> np.ndarray:
    """The integer cut `int(tau * max(img))` for each threshold tau (float64, truncation)."""
    return (np.asarray(thresholds, dtype=np.float64) * float(img_max)).astype(np.int64)


def _contours(img: np.ndarray, level: int, mode: int = cv2.RETR_TREE):
    foreground = np.where(img > level, np.uint8(255), np.uint8(0))
    return cv2.findContours(foreground, mode, cv2.CHAIN_APPROX_SIMPLE)[0]


def _contour_areas(contours) -> np.ndarray:
    """cv2.contourArea of each contour (shoelace in float64), vectorised over all contours."""
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    nxt = np.arange(len(pts)) + 1
    nxt[starts + lengths - 1] = starts  # close each polygon
    cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    return np.abs(np.add.reduceat(cross, starts)) * 0.5


def _rects_to_boxes(contours, width: int, height: int) -> np.ndarray:
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    x, y, w, h = rects.T
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def boxes_at_threshold(img: np.ndarray, level: int, all_contours: bool) -> np.ndarray:
    """Boxes `(n, 4)` int64 of the uint8 map `img` at integer cut `level` (foreground `> level`):
    all contours (MaxBoxAccV2) or the largest (v1, first on ties); `[[0,0,0,0]]` if none."""
    height, width = img.shape
    if not all_contours:
        # The largest contour is always an outer one (a hole or an island is smaller than the
        # contour around it), so outer contours suffice unless two share the largest area:
        # then RETR_TREE decides, as the protocol takes the first in its order.
        outer = _contours(img, level, cv2.RETR_EXTERNAL)
        if len(outer) == 0:
            return NO_BOX.copy()
        areas = _contour_areas(outer)
        if (areas == areas.max()).sum() == 1:
            return _rects_to_boxes([outer[int(np.argmax(areas))]], width, height)
    contours = _contours(img, level)
    if len(contours) == 0:
        return NO_BOX.copy()
    if not all_contours and len(contours) > 1:
        contours = [contours[int(np.argmax(_contour_areas(contours)))]]
    return _rects_to_boxes(contours, width, height)


def iou_matrix(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU `(n, m)` with the inclusive (+1) pixel convention, float64."""
    a = np.asarray(boxes, dtype=np.int64)[:, None, :]
    b = np.asarray(gt_boxes, dtype=np.int64)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


@njit(cache=True, nogil=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True, nogil=True, inline="always")
def _box_gt_iou(x0, y0, x1, y1, gt):
    """Max IoU (+1 convention) of one box with the rows of `gt`."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        iw = min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1
        ih = min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1
        inter = max(0, iw) * max(0, ih)
        garea = (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1)
        iou = inter / (area + garea - inter)
        if iou > best:
            best = iou
    return best


@njit(cache=True, nogil=True)
def _pixel_order_values(flat):
    """Pixel indices sorted by value in 0..255 (counting sort) and each value's run start."""
    n = flat.shape[0]
    start = np.zeros(257, np.int64)
    for p in range(n):
        start[np.int64(flat[p]) + 1] += 1
    for v in range(256):
        start[v + 1] += start[v]
    order = np.empty(n, np.int64)
    fill = start[:256].copy()
    for p in range(n):
        v = np.int64(flat[p])
        order[fill[v]] = p
        fill[v] += 1
    return order, start


@njit(cache=True, nogil=True, inline="always")  # inlined: a call per pixel costs refcounts
def _add_pixel(p, width, height, di, dj, parent, size, box, border, added, roots, where, n_roots,
               area2, window):
    """Add pixel p to the union-find, merging with added neighbours; returns the live-root count.
    With `area2`/`window` (the filled-region sweep) it also counts 2x the contour area."""
    i = p // width
    j = p - i * width
    parent[p] = p
    size[p] = 1
    box[p, 0] = j
    box[p, 1] = i
    box[p, 2] = j
    box[p, 3] = i
    border[p] = i == 0 or j == 0 or i == height - 1 or j == width - 1
    added[p] = True
    roots[n_roots] = p
    where[p] = n_roots
    n_roots += 1
    rp = p  # root of p's component, kept current through the merges
    for d in range(di.shape[0]):
        ii = i + di[d]
        jj = j + dj[d]
        if ii < 0 or jj < 0 or ii >= height or jj >= width:
            continue
        q = ii * width + jj
        if not added[q]:
            continue
        rq = _find(parent, q)
        if rq == rp:
            continue
        if size[rp] < size[rq]:  # union by size keeps the trees flat
            rp, rq = rq, rp
        parent[rq] = rp
        size[rp] += size[rq]
        box[rp, 0] = min(box[rp, 0], box[rq, 0])
        box[rp, 1] = min(box[rp, 1], box[rq, 1])
        box[rp, 2] = max(box[rp, 2], box[rq, 2])
        box[rp, 3] = max(box[rp, 3], box[rq, 3])
        border[rp] = border[rp] or border[rq]
        area2[rp] += area2[rq]
        last = roots[n_roots - 1]
        roots[where[rq]] = last
        where[last] = where[rq]
        n_roots -= 1
    if window.shape[0] > 0:
        # The 4 windows (2x2 pixel blocks on the padded grid) holding p: a window's share of the
        # contour area is 1/2 with 3 filled pixels and 1 with 4, so 2x the area grows by 1 when a
        # window that already had 2 or 3 filled pixels gains p. Every filled pixel of a window is
        # 8-adjacent to p, hence in p's component after the merges above.
        for wi in range(i, i + 2):
            for wj in range(j, j + 2):
                w = wi * (width + 1) + wj
                if window[w] >= 2:
                    area2[rp] += 1
                window[w] += 1
    return n_roots


@njit(cache=True, nogil=True)
def _components(img, order, start, foreground, need, gt, best_iou):
    """One union-find sweep over the uint8 levels. Foreground: 8-connected `img > t`, pixels
    added by decreasing value; every component is an outer contour. Background: 4-connected
    `img <= t`, added by increasing value; a component off the border is a hole contour.
    Raises best_iou[t] to the best IoU of those contours' boxes with the GT boxes."""
    height, width = img.shape
    n = height * width
    # Compact int32 state: pixels are visited in value order, so locality matters.
    parent = np.empty(n, np.int32)
    size = np.empty(n, np.int32)
    box = np.empty((n, 4), np.int32)  # x0, y0, x1, y1 of each root's component
    border = np.zeros(n, np.bool_)
    added = np.zeros(n, np.bool_)
    roots = np.empty(n, np.int32)  # live roots, swap-removed on union
    where = np.empty(n, np.int32)
    area2 = np.zeros(n, np.int64)  # unused here
    no_window = np.zeros(0, np.int8)
    if foreground:
        di = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
        dj = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
    else:
        di = np.array([-1, 0, 0, 1])
        dj = np.array([0, -1, 1, 0])
    n_roots = 0
    for step in range(256):
        v = 255 - step if foreground else step
        for k in range(start[v], start[v + 1]):
            n_roots = _add_pixel(order[k], width, height, di, dj, parent, size, box, border, added, roots,
                                 where, n_roots, area2, no_window)
        t = v - 1 if foreground else v  # the level whose state is now complete
        if t < 0 or t > 255 or not need[t]:
            continue
        best = 0.0
        if foreground and n_roots == 0:  # no contour: the protocol's box [0, 0, 0, 0]
            best = _box_gt_iou(0, 0, 0, 0, gt)
        for r in range(n_roots):
            root = roots[r]
            if foreground:
                x0, y0 = np.int64(box[root, 0]), np.int64(box[root, 1])
                x1 = min(np.int64(box[root, 2]) + 1, width - 1)
                y1 = min(np.int64(box[root, 3]) + 1, height - 1)
            elif border[root]:
                continue
            else:  # hole: its contour runs on the foreground pixels around it
                x0, y0 = np.int64(box[root, 0]) - 1, np.int64(box[root, 1]) - 1
                x1 = min(np.int64(box[root, 2]) + 2, width - 1)
                y1 = min(np.int64(box[root, 3]) + 2, height - 1)
            best = max(best, _box_gt_iou(x0, y0, x1, y1, gt))
        best_iou[t] = max(best_iou[t], best)


@njit(cache=True, nogil=True)
def _outside_levels(img):
    """m[p] = the lowest t at which p is 4-connected to the image border through pixels
    `<= t` (a minimax path value, by a 256-bucket flood): p lies outside every contour of
    `img > t` iff m[p] <= t, so the filled regions at level t are `m > t`."""
    height, width = img.shape
    n = height * width
    m = np.empty(n, np.uint8)
    seen = np.zeros(n, np.bool_)
    head = np.full(256, -1, np.int64)
    nxt = np.empty(n, np.int64)
    for p in range(n):
        i = p // width
        j = p - i * width
        if i == 0 or j == 0 or i == height - 1 or j == width - 1:
            v = np.int64(img[i, j])
            m[p] = v
            seen[p] = True
            nxt[p] = head[v]
            head[v] = p
    di = np.array([-1, 1, 0, 0])
    dj = np.array([0, 0, -1, 1])
    for v in range(256):
        while head[v] != -1:
            p = head[v]
            head[v] = nxt[p]
            i = p // width
            j = p - i * width
            for d in range(4):
                ii = i + di[d]
                jj = j + dj[d]
                if ii < 0 or jj < 0 or ii >= height or jj >= width:
                    continue
                q = ii * width + jj
                if seen[q]:
                    continue
                seen[q] = True
                mq = max(v, np.int64(img[ii, jj]))
                m[q] = mq
                nxt[q] = head[mq]
                head[mq] = q
    return m


@njit(cache=True, nogil=True)
def _hole_levels(img, outside):
    """hole[t]: some contour of `img > t` has a hole, i.e. a pixel p with img[p] <= t < outside[p]
    (background, yet cut off from the border)."""
    diff = np.zeros(257, np.int64)
    flat = img.ravel()
    for p in range(flat.shape[0]):
        lo, hi = np.int64(flat[p]), np.int64(outside[p])
        if hi > lo:
            diff[lo] += 1
            diff[hi] -= 1
    hole = np.zeros(256, np.bool_)
    running = 0
    for t in range(256):
        running += diff[t]
        hole[t] = running > 0
    return hole


@njit(cache=True, nogil=True)
def _largest(img, outside, need, gt, largest_iou, tied, hole, all_iou):
    """For every level t with need[t]: largest_iou[t] = IoU with the GT boxes of the contour of
    largest area (the protocol's v1 box); tied[t] when two top-level contours share that area
    (then OpenCV's contour order must decide). Sweeps the filled regions `outside > t`. Where
    `img > t` has no hole (not hole[t]) the filled regions are its components, so all_iou[t]
    (best IoU over all contours) comes from the same sweep."""
    height, width = img.shape
    n = height * width
    order, start = _pixel_order_values(outside)
    parent = np.empty(n, np.int32)
    size = np.empty(n, np.int32)
    box = np.empty((n, 4), np.int32)
    border = np.zeros(n, np.bool_)
    added = np.zeros(n, np.bool_)
    roots = np.empty(n, np.int32)
    where = np.empty(n, np.int32)
    area2 = np.zeros(n, np.int64)
    window = np.zeros((height + 1) * (width + 1), np.int8)
    di = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
    dj = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
    n_roots = 0
    for step in range(256):
        v = 255 - step
        for k in range(start[v], start[v + 1]):
            n_roots = _add_pixel(order[k], width, height, di, dj, parent, size, box, border, added, roots,
                                 where, n_roots, area2, window)
        t = v - 1
        if t < 0 or not need[t]:
            continue
        if n_roots == 0:
            largest_iou[t] = _box_gt_iou(0, 0, 0, 0, gt)
            if not hole[t]:
                all_iou[t] = max(all_iou[t], largest_iou[t])
            continue
        best_root, best_area, count = -1, np.int64(-1), 0
        best_any = 0.0
        for r in range(n_roots):
            root = roots[r]
            if area2[root] > best_area:
                best_root, best_area, count = root, area2[root], 1
            elif area2[root] == best_area:
                count += 1
            if not hole[t]:
                best_any = max(best_any, _box_gt_iou(np.int64(box[root, 0]), np.int64(box[root, 1]),
                                                     min(np.int64(box[root, 2]) + 1, width - 1),
                                                     min(np.int64(box[root, 3]) + 1, height - 1), gt))
        tied[t] = count > 1
        x0, y0 = np.int64(box[best_root, 0]), np.int64(box[best_root, 1])
        x1 = min(np.int64(box[best_root, 2]) + 1, width - 1)
        y1 = min(np.int64(box[best_root, 3]) + 1, height - 1)
        largest_iou[t] = _box_gt_iou(x0, y0, x1, y1, gt)
        if not hole[t]:
            all_iou[t] = max(all_iou[t], best_any)


@njit(cache=True, nogil=True)
def _sweep(img, need, gt, all_iou, largest_iou, tied):
    """Best IoU with the GT boxes at every needed level: over all contours, and of the largest.
    Levels whose contours have no holes (all levels of most maps) need only the filled-region
    sweep; the foreground and hole sweeps run when a needed level has a hole."""
    outside = _outside_levels(img)
    hole = _hole_levels(img, outside)
    with_holes = need & hole
    if with_holes.any():
        order, start = _pixel_order_values(img.ravel())
        _components(img, order, start, True, with_holes, gt, all_iou)
        _components(img, order, start, False, with_holes, gt, all_iou)
    _largest(img, outside, need, gt, largest_iou, tied, hole, all_iou)


def level_ious(img: np.ndarray, levels: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with the GT boxes at each integer cut in `levels` (any order, repeats allowed),
    over all contours (MaxBoxAccV2) and over the largest contour (v1): two float64 arrays."""
    levels = np.asarray(levels, dtype=np.int64)
    if levels.size and (levels.min() < 0 or levels.max() > 254):
        raise ValueError("integer cuts must lie in [0, 254] (thresholds in [0, 1))")
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    unique = np.unique(levels)
    all_iou = np.zeros(256, dtype=np.float64)
    largest_iou = np.zeros(256, dtype=np.float64)
    if HAVE_NUMBA:
        need = np.zeros(256, dtype=np.bool_)
        need[unique] = True
        tied = np.zeros(256, dtype=np.bool_)
        _sweep(np.ascontiguousarray(img), need, gt, all_iou, largest_iou, tied)
        for t in np.nonzero(tied)[0]:  # equal areas: OpenCV's contour order decides
            largest_iou[t] = iou_matrix(boxes_at_threshold(img, int(t), False), gt).max()
    else:
        for t in unique:
            all_iou[t] = iou_matrix(boxes_at_threshold(img, int(t), True), gt).max()
            largest_iou[t] = iou_matrix(boxes_at_threshold(img, int(t), False), gt).max()
    return all_iou[levels], largest_iou[levels]
