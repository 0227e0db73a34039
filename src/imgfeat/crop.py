"""Box arithmetic: choose the main object, add a margin, cut the crop. Pure functions."""

from __future__ import annotations

import math

import numpy as np


def select_main(detections: np.ndarray, threshold: float, mode: str = "score") -> int | None:
    """Index of the main object in (n, 6) detections, or None when none reaches `threshold`.

    mode "score" keeps the highest score; "score_area" the highest score x box area (a
    large, fairly confident object beats a tiny, slightly more confident one).
    """
    if detections.size == 0:
        return None
    scores = detections[:, 4]
    passing = scores >= threshold
    if not passing.any():
        return None
    keys = scores.astype(np.float64)
    if mode == "score_area":
        areas = np.clip(detections[:, 2] - detections[:, 0], 0, None) * \
                np.clip(detections[:, 3] - detections[:, 1], 0, None)
        keys = keys * areas
    keys = np.where(passing, keys, -np.inf)
    return int(np.argmax(keys))


def expand_box(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop window around `box` with `margin` x box size on each side, inside the image,
    at least one pixel wide and high."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left = min(max(0, math.floor(x1 - dx)), width - 1)
    top = min(max(0, math.floor(y1 - dy)), height - 1)
    right = max(min(width, math.ceil(x2 + dx)), left + 1)
    bottom = max(min(height, math.ceil(y2 + dy)), top + 1)
    return left, top, right, bottom


def crop(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of `image` inside an integer (left, top, right, bottom) window."""
    left, top, right, bottom = window
    return image[top:bottom, left:right]


def scale_box(box: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A box in reduced-image pixels, in full-resolution pixels."""
    return np.asarray(box[:4], dtype=np.float32) * np.asarray([sx, sy, sx, sy], dtype=np.float32)
