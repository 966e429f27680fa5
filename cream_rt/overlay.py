"""Overlay images: the score map as a heat map over the image, predicted boxes in green,
ground truth in red, and two of them side by side (CAM | CREAM). Used by `cream localize
--overlays [--overlays-compare]` and the demo."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["draw_overlay", "side_by_side"]


def draw_overlay(image_rgb: np.ndarray, scoremap: np.ndarray, boxes: Sequence[Sequence[float]],
                 caption: str | None = None, gt_boxes: Sequence[Sequence[float]] = (),
                 thickness: int | None = None) -> np.ndarray:
    """A BGR uint8 image (ready for `cv2.imwrite`): 55% image, 45% JET heat map of the [0, 1]
    `scoremap` resized to the image, boxes in the image's pixel coordinates (predicted green,
    ground truth red); lines and caption scaled to the image (readable on a 4000 px photo)."""
    h, w = image_rgb.shape[:2]
    scale = max(0.5, min(h, w) / 500)
    heat = cv2.resize((np.clip(scoremap, 0, 1) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    out = cv2.addWeighted(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), 0.55,
                          cv2.applyColorMap(heat, cv2.COLORMAP_JET), 0.45, 0)
    line = thickness or max(2, round(2 * scale))
    for color, shown in (((0, 0, 255), gt_boxes), ((0, 255, 0), boxes)):
        for x0, y0, x1, y1 in shown:
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), color, line)
    if caption:
        weight = max(1, round(2 * scale))
        (_, text_h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
        cv2.rectangle(out, (0, 0), (w, text_h + base + round(8 * scale)), (0, 0, 0), -1)  # a band it reads on
        cv2.putText(out, caption, (round(4 * scale), text_h + round(4 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), weight, cv2.LINE_AA)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two BGR images of one height next to each other with a white gap (CAM | CREAM)."""
    return np.hstack([left, np.full((left.shape[0], gap, 3), 255, np.uint8), right])
