"""Overlay images: the score map as a heat map over the image, predicted boxes in green,
ground truth in red. Used by `cream localize --overlays` and the demo."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["draw_overlay"]


def draw_overlay(image_rgb: np.ndarray, scoremap: np.ndarray, boxes: Sequence[Sequence[float]],
                 caption: str | None = None, gt_boxes: Sequence[Sequence[float]] = (),
                 thickness: int = 2) -> np.ndarray:
    """A BGR uint8 image (ready for `cv2.imwrite`): 55% image, 45% JET heat map of the [0, 1]
    `scoremap` resized to the image, boxes in the image's pixel coordinates."""
    heat = cv2.resize((np.clip(scoremap, 0, 1) * 255).astype(np.uint8), (image_rgb.shape[1], image_rgb.shape[0]),
                      interpolation=cv2.INTER_CUBIC)
    out = cv2.addWeighted(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), 0.55,
                          cv2.applyColorMap(heat, cv2.COLORMAP_JET), 0.45, 0)
    for color, shown in (((0, 0, 255), gt_boxes), ((0, 255, 0), boxes)):
        for x0, y0, x1, y1 in shown:
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), color, thickness)
    if caption:
        cv2.putText(out, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return out
