"""The evaluator's all-thresholds box engine (numba): every threshold of a map at once, with the
semantics of `boxes.boxes_at_threshold` at each.

One pass over the pixels writes the row runs of every needed level; each level is then labelled
over its runs. An outer contour's rect is the bounding box of its 8-connected foreground
component; a hole contour's rect is the bounding box, grown by one pixel, of a 4-connected
background component off the image border; the largest contour (MaxBoxAcc v1) is the filled
region of largest polygon area, counted exactly from 2x2 windows. Two regions of equal largest
area fall back to OpenCV, whose contour order decides. The tests check it against a plain
per-threshold reference on adversarial maps.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from .boxes import boxes_at_threshold, iou_matrix, quantize, reference_level, threshold_levels

__all__ = ["HAVE_NUMBA", "quantize_checked", "threshold_ious", "compile_kernels"]

_log = logging.getLogger(__name__)

try:  # numba is the `fast` extra; without it the evaluator uses OpenCV per level.
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on minimal installs
    HAVE_NUMBA = False


def njit(cache: bool = False, **options):
    """numba's `njit`, or the plain function without numba. With `cache`, compiled code is
    kept on disk when numba finds a writable place; a read-only install without a writable
    HOME compiles at each start instead of failing at import."""
    def decorate(fn):
        if not HAVE_NUMBA:
            return fn
        if cache:
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                pass
        return numba.njit(**options)(fn)
    return decorate


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
    x0, y0, x1, y1 = np.int64(x0), np.int64(y0), np.int64(x1), np.int64(y1)
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
def _level_runs(img, levels):
    """Row runs of `img > levels[k]` for every k, from two passes over the pixels: where the
    level rank rises from a to b at column x, runs of the levels a..b-1 start at x; where it
    falls from a to b, runs of the levels b..a-1 end at x-1. Level-major: the runs of level k,
    row y are `start[i], end[i]` (inclusive columns, increasing) for i in
    `off[y, k] .. off[y+1, k]-1`; the runs of level k lie in rows first_row[k] .. last_row[k]."""
    height, width = img.shape
    n_levels = levels.shape[0]
    rank = np.empty(256, np.int32)  # rank[v] = number of levels below v: foreground at k iff rank[v] > k
    k = 0
    for v in range(256):
        while k < n_levels and levels[k] < v:
            k += 1
        rank[v] = k
    # Pass 1 (branch-free): runs per row and level, a difference array over the levels first.
    count = np.zeros((height, n_levels + 1), np.int32)
    for y in range(height):
        prev = 0
        for x in range(width):
            r = rank[img[y, x]]
            up = np.int32(r > prev)
            count[y, prev] += up
            count[y, r] -= up
            prev = r
        running = 0
        for k in range(n_levels):
            running += count[y, k]
            count[y, k] = running
    # Offsets, row by row so that every pass walks memory in order.
    off = np.empty((height + 1, n_levels), np.int32)
    fill = np.zeros(n_levels, np.int32)
    for y in range(height):
        for k in range(n_levels):
            fill[k] += count[y, k]
    total = 0
    for k in range(n_levels):
        level_total = fill[k]
        fill[k] = total
        total += level_total
    for y in range(height + 1):
        for k in range(n_levels):
            off[y, k] = fill[k]
            if y < height:
                fill[k] += count[y, k]
    first_row = np.full(n_levels, -1, np.int64)  # the rows holding each level's runs
    last_row = np.full(n_levels, -1, np.int64)
    for y in range(height):
        for k in range(n_levels):
            if count[y, k] > 0:
                last_row[k] = y
                if first_row[k] < 0:
                    first_row[k] = y
    # Pass 2: write the starts and ends.
    fill_start = np.empty(n_levels, np.int32)
    fill_end = np.empty(n_levels, np.int32)
    start = np.empty(total, np.int32)
    end = np.empty(total, np.int32)
    for y in range(height):
        for k in range(n_levels):
            fill_start[k] = off[y, k]
            fill_end[k] = off[y, k]
        prev = 0
        for x in range(width + 1):
            r = rank[img[y, x]] if x < width else 0
            if r > prev:
                for k in range(prev, r):
                    start[fill_start[k]] = x
                    fill_start[k] += 1
            elif r < prev:
                for k in range(r, prev):
                    end[fill_end[k]] = x - 1
                    fill_end[k] += 1
            prev = r
    return start, end, off, first_row, last_row


@njit(cache=True, nogil=True)
def _label_runs(start, end, row_off, y0, slack, parent, area2, box, flag, with_area):
    """Union-find over the runs `row_off[0] .. row_off[-1]-1` of consecutive rows from image row
    y0 (the state arrays are indexed from row_off[0]): runs of adjacent rows join when their
    columns overlap, widened by `slack` (1: 8-connectivity, 0: 4). A component's root is its
    first run and holds its box (x0, y0, x1, y1), the OR of its runs' `flag`, and with
    `with_area` twice its contour area: windows (2x2 pixel blocks) with 3 filled pixels count 1,
    with 4 count 2, and all pixels of such a window lie in one component. Returns (components,
    joins of runs already in one component); for 8-connected foreground runs the latter is the
    number of holes (Euler number = runs - adjacent pairs = components - holes)."""
    rows = row_off.shape[0] - 1
    base = row_off[0]
    components = 0
    redundant = 0
    for y in range(rows):
        i = row_off[y - 1] if y > 0 else row_off[0]
        i_stop = row_off[y]
        for j in range(row_off[y], row_off[y + 1]):
            sj, ej = np.int64(start[j]), np.int64(end[j])
            while i < i_stop and np.int64(end[i]) + slack < sj:
                i += 1
            root = -1  # j's root so far
            jj = j - base
            ii = i
            while ii < i_stop and np.int64(start[ii]) <= ej + slack:  # runs of the row above touching j
                si, ei = np.int64(start[ii]), np.int64(end[ii])
                ri = _find(parent, ii - base)
                if root < 0:  # j joins ri's component
                    parent[jj] = ri
                    box[ri, 0] = min(box[ri, 0], sj)
                    box[ri, 2] = max(box[ri, 2], ej)
                    box[ri, 3] = y0 + y
                    flag[ri] = flag[ri] or flag[jj]
                    root = ri
                elif ri == root:
                    redundant += 1
                else:  # j bridges two components
                    keep, gone = min(ri, root), max(ri, root)
                    parent[gone] = keep
                    box[keep, 0] = min(box[keep, 0], box[gone, 0])
                    box[keep, 1] = min(box[keep, 1], box[gone, 1])
                    box[keep, 2] = max(box[keep, 2], box[gone, 2])
                    box[keep, 3] = max(box[keep, 3], box[gone, 3])
                    area2[keep] += area2[gone]
                    flag[keep] = flag[keep] or flag[gone]
                    components -= 1
                    root = keep
                if with_area:
                    # windows at columns (x, x+1): 2 pixels of run ii and at least 1 of run j, or the converse
                    a = min(ei - 1, ej) - max(si, sj - 1) + 1
                    b = min(ej - 1, ei) - max(sj, si - 1) + 1
                    area2[root] += max(a, 0) + max(b, 0)  # type: ignore[operator]  # numba ints
                ii += 1
            if ii > i:  # the last run touching j may touch the next run too
                i = ii - 1
            if root < 0:  # a new component
                parent[jj] = jj
                area2[jj] = 0
                box[jj, 0] = sj
                box[jj, 1] = y0 + y
                box[jj, 2] = ej
                box[jj, 3] = y0 + y
                components += 1
    return components, redundant


@njit(cache=True, nogil=True)
def _gap_runs(start, end, row_off, y0, height, gap_start, gap_end, gap_off, outside):
    """The background runs between two foreground runs of a row (the others touch the image
    border), for the rows of `row_off` from image row y0; outside[g] when gap g touches the
    border or a border-touching background run of an adjacent row (a side run, or a row
    without foreground)."""
    rows = row_off.shape[0] - 1
    n = 0
    for y in range(rows):
        gap_off[y] = n
        for i in range(row_off[y], row_off[y + 1] - 1):
            g0, g1 = np.int64(end[i]) + 1, np.int64(start[i + 1]) - 1
            out = y0 + y == 0 or y0 + y == height - 1
            for yy in (y - 1, y + 1):
                if yy < 0 or yy >= rows:  # a row without foreground
                    out = True
                else:
                    lo, hi = row_off[yy], row_off[yy + 1]
                    out = out or lo == hi or g0 < start[lo] or g1 > end[hi - 1]
            gap_start[n] = g0
            gap_end[n] = g1
            outside[n] = out
            n += 1
    gap_off[rows] = n


@njit(cache=True, nogil=True)
def _fill_holes(start, end, row_off, gap_parent, outside, filled_start, filled_end, filled_off):
    """Per row, the foreground runs joined across the gaps that are holes: the filled regions
    whose outer contours are the top-level contours."""
    height = row_off.shape[0] - 1
    n = 0
    g = 0  # gaps are numbered like the pairs of consecutive runs of a row
    for y in range(height):
        filled_off[y] = n
        lo, hi = row_off[y], row_off[y + 1]
        if lo == hi:
            continue
        s = start[lo]
        for i in range(lo, hi):
            if i == hi - 1 or outside[_find(gap_parent, g)]:
                filled_start[n] = s
                filled_end[n] = end[i]
                n += 1
                if i < hi - 1:
                    s = start[i + 1]
            if i < hi - 1:
                g += 1
    filled_off[height] = n


@njit(cache=True, nogil=True)
def _best_roots(parent, area2, box, n, width, height, gt):
    """Over the roots among the first n entries: the best IoU of their boxes with the GT, the
    root of largest area2, how many roots share that area, and whether that root's own area
    beats every other root's box bound 2(w-1)(h-1) (a contour through pixel centres inside a
    w x h box encloses at most (w-1)(h-1)): then it is the largest contour even with its
    holes and the others' holes filled in."""
    best_iou, best_area, best_root, ties = 0.0, np.int64(-1), 0, 0
    bound1, bound1_root, bound2 = np.int64(-1), -1, np.int64(-1)  # the two largest box bounds
    for i in range(n):
        if parent[i] != i:
            continue
        best_iou = max(best_iou, _box_gt_iou(box[i, 0], box[i, 1], min(box[i, 2] + 1, width - 1),
                                             min(box[i, 3] + 1, height - 1), gt))
        a = np.int64(area2[i])
        if a > best_area:
            best_area, best_root, ties = a, i, 1
        elif a == best_area:
            ties += 1
        bound = 2 * (np.int64(box[i, 2]) - box[i, 0]) * (np.int64(box[i, 3]) - box[i, 1])
        if bound > bound1:
            bound1, bound1_root, bound2 = bound, i, bound1
        elif bound > bound2:
            bound2 = bound
    other_bound = bound2 if bound1_root == best_root else bound1
    return best_iou, best_root, ties, best_area > other_bound


@njit(cache=True, nogil=True)
def _level_box_ious(img, levels, gt, all_iou, largest_iou, tied):
    """all_iou[t] / largest_iou[t]: best IoU with the GT boxes over all contours / of the largest
    contour of `img > t`, for t in `levels` (sorted, unique); tied[t] when two top-level
    contours share the largest area (OpenCV's contour order must decide).
    Contours from row runs, level by level: an outer contour's rect is the bounding box of its
    8-connected foreground component; a hole contour's rect is the bounding box, grown by one
    pixel, of a 4-connected background component off the image border. Where there are holes,
    the largest contour is the largest filled region (foreground plus holes)."""
    height, width = img.shape
    start, end, off, first_row, last_row = _level_runs(img, levels)
    widest = 1
    for k in range(levels.shape[0]):
        widest = max(widest, off[height, k] - off[0, k])
    parent = np.empty(widest, np.int32)  # one level's foreground runs, then its filled runs
    area2 = np.empty(widest, np.int32)
    box = np.empty((widest, 4), np.int32)
    flag = np.zeros(widest, np.bool_)
    gap_start = np.empty(widest, np.int32)
    gap_end = np.empty(widest, np.int32)
    gap_off = np.empty(height + 1, np.int32)
    gap_parent = np.empty(widest, np.int32)
    gap_area2 = np.empty(widest, np.int32)
    gap_box = np.empty((widest, 4), np.int32)
    outside = np.empty(widest, np.bool_)
    filled_start = np.empty(widest, np.int32)
    filled_end = np.empty(widest, np.int32)
    filled_off = np.empty(height + 1, np.int32)
    no_box = _box_gt_iou(0, 0, 0, 0, gt)
    for k in range(levels.shape[0]):
        t = levels[k]
        n = off[height, k] - off[0, k]
        if n == 0:  # no contour: the protocol's box [0, 0, 0, 0]
            all_iou[t] = no_box
            largest_iou[t] = no_box
            continue
        y0, y1 = first_row[k], last_row[k]
        row_off = off[y0:y1 + 2, k]
        rows = y1 - y0 + 1
        components, holes = _label_runs(start, end, row_off, y0, 1, parent, area2, box, flag, True)
        best_all, best_root, ties, dominant = _best_roots(parent, area2, box, n, width, height, gt)
        if holes > 0:
            _gap_runs(start, end, row_off, y0, height, gap_start, gap_end, gap_off, outside)
            _label_runs(gap_start, gap_end, gap_off[:rows + 1], y0, 0, gap_parent, gap_area2, gap_box, outside, False)
            for g in range(gap_off[rows]):
                if gap_parent[g] == g and not outside[g]:  # a hole: its contour runs on the pixels around it
                    best_all = max(best_all, _box_gt_iou(gap_box[g, 0] - 1, gap_box[g, 1] - 1,
                                                         min(gap_box[g, 2] + 2, width - 1),
                                                         min(gap_box[g, 3] + 2, height - 1), gt))
            if components > 1 and not dominant:  # islands or several regions: compare the filled regions
                _fill_holes(start, end, row_off, gap_parent, outside, filled_start, filled_end, filled_off)
                _label_runs(filled_start, filled_end, filled_off[:rows + 1], y0, 1, parent, area2, box, flag, True)
                _, best_root, ties, _ = _best_roots(parent, area2, box, filled_off[rows], width, height, gt)
        all_iou[t] = best_all
        tied[t] = ties > 1
        largest_iou[t] = _box_gt_iou(box[best_root, 0], box[best_root, 1], min(box[best_root, 2] + 1, width - 1),
                                     min(box[best_root, 3] + 1, height - 1), gt)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})  # lets the min / max / sum reductions vectorise
def _quantize_stats(scoremap, img):
    """img = uint8(map * 255) with the product in the map's dtype, as numpy computes it
    (float32 * float32 stays float32); returns whether the map has NaN (its sum is NaN), its
    min and its max."""
    values = scoremap.ravel()
    out = img.ravel()
    lo, hi, total = np.inf, -np.inf, 0.0
    for i in range(values.shape[0]):
        v = values[i]
        total += v
        lo = min(lo, v)
        hi = max(hi, v)
    for i in range(values.shape[0]):  # clamped so that bad values (reported by the caller) stay defined
        out[i] = np.uint8(min(max(values[i] * np.float32(255.0), 0.0), 255.0))
    return total != total, lo, hi


def quantize_checked(scoremap: np.ndarray) -> tuple[np.ndarray, bool, float, float]:
    """`quantize(scoremap)` with the map's NaN flag, min and max from the same pass (one
    compiled pass for float32 and float64 maps; numpy for other dtypes)."""
    if HAVE_NUMBA and scoremap.dtype in (np.float32, np.float64):
        img = np.empty(scoremap.shape, np.uint8)
        has_nan, lo, hi = _quantize_stats(np.ascontiguousarray(scoremap), img)
        return img, bool(has_nan), float(lo), float(hi)
    has_nan = bool(np.isnan(scoremap).any())
    img = quantize(np.nan_to_num(scoremap)) if has_nan else quantize(scoremap)
    return img, has_nan, float(np.nanmin(scoremap)), float(np.nanmax(scoremap))


@njit(cache=True, nogil=True)
def _threshold_box_ious(img, thresholds, reference, gt, iou_all, iou_largest, tied):
    """iou_all[i] / iou_largest[i]: best IoU with the GT boxes over all contours / of the
    largest contour at thresholds[i] (cut int(tau * reference))."""
    cut = np.empty(thresholds.shape[0], np.int64)
    need = np.zeros(256, np.bool_)
    for i in range(thresholds.shape[0]):
        cut[i] = np.int64(thresholds[i] * reference)
        need[cut[i]] = True
    levels = np.nonzero(need)[0]
    all_iou = np.zeros(256, np.float64)
    largest_iou = np.zeros(256, np.float64)
    _level_box_ious(img, levels, gt, all_iou, largest_iou, tied)
    for i in range(thresholds.shape[0]):
        iou_all[i] = all_iou[cut[i]]
        iou_largest[i] = largest_iou[cut[i]]


def threshold_ious(img: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray,
                   pas: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with the GT boxes of the uint8 map `img` at each score threshold in [0, 1), over
    all contours (MaxBoxAccV2) and of the largest contour (v1): two float64 arrays. Thresholds
    are fractions of `max(img)`, or of its 90th percentile with `pas`."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.size and (thresholds.min() < 0 or thresholds.max() >= 1):
        raise ValueError("score thresholds must lie in [0, 1)")
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    iou_all = np.zeros(thresholds.size, dtype=np.float64)
    iou_largest = np.zeros(thresholds.size, dtype=np.float64)
    reference = reference_level(img, pas)
    if HAVE_NUMBA:
        tied = np.zeros(256, dtype=np.bool_)
        _threshold_box_ious(np.ascontiguousarray(img), thresholds, reference, gt, iou_all, iou_largest, tied)
        if tied.any():  # equal largest areas: OpenCV's contour order decides
            cuts = threshold_levels(reference, thresholds)
            for t in np.nonzero(tied)[0]:
                iou_largest[cuts == t] = iou_matrix(boxes_at_threshold(img, int(t), False), gt).max()
        return iou_all, iou_largest
    cuts = threshold_levels(reference, thresholds)
    for t in np.unique(cuts):
        iou_all[cuts == t] = iou_matrix(boxes_at_threshold(img, int(t), True), gt).max()
        iou_largest[cuts == t] = iou_matrix(boxes_at_threshold(img, int(t), False), gt).max()
    return iou_all, iou_largest


COMPILE_NOTICE_AFTER_S = 1.0


_compiled = threading.Event()


def compile_kernels(announce: bool = True) -> float:
    """Compile the evaluator's numba kernels now (or load them from numba's on-disk cache), once
    per process, and return the seconds it took. A fresh install's first evaluation pays the
    compilation (about 5-10 s on 2 cores) before its first map; with `announce`, a logged line
    says so when it takes more than a second. `make setup` calls this, so the cache is warm."""
    if not HAVE_NUMBA or _compiled.is_set():
        return 0.0
    notice = threading.Timer(COMPILE_NOTICE_AFTER_S, lambda: _log.warning(
        "compiling the evaluator's numba kernels (first run after install; cached afterwards) ..."))
    notice.daemon = True
    if announce:
        notice.start()
    started = time.perf_counter()
    try:
        for dtype in (np.float32, np.float64):  # the dtypes and layouts the evaluator passes
            img, _, _, _ = quantize_checked(np.linspace(0, 1, 64, dtype=dtype).reshape(8, 8))
        threshold_ious(img, np.array([0.1, 0.5]), np.array([[1, 1, 5, 5]]))
    finally:
        notice.cancel()
    _compiled.set()
    return time.perf_counter() - started
