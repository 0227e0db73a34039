"""Box arithmetic: choose the main object, add a margin, cut the crop. Pure functions."""

from __future__ import annotations

import math

import numpy as np


SELECT_MODES = ("score", "score_area", "stable")
NEAR_TIE = 0.1  # "stable": detections within this of the best score count as tied


def select_main(detections: np.ndarray, threshold: float, mode: str = "score") -> int | None:
    """Index of the main object in (n, 6) detections, or None when none reaches `threshold`.

    mode "score" (default) keeps the highest score; "score_area" the highest score x box area
    (a large, fairly confident object beats a tiny, slightly more confident one); "stable" the
    largest box among those within NEAR_TIE of the best score, so that copies of one picture,
    whose scores move by a few hundredths, keep the same main object more often.
    benchmarks/main_object.py: the main object changed in 25 % of near-duplicate copies of the
    sample photos with "score", 18 % with "stable", 15 % with "score_area"; but score_area
    prefers large weak boxes (a horse taken for a sheep at 0.44 over a person at 0.79) and
    stable lowered one copy's object similarity to 0.77, so "score" stays the default and the
    whole-image vector (image_embedding) is what near-duplicate search uses.
    """
    if detections.size == 0:
        return None
    scores = detections[:, 4]
    passing = scores >= threshold
    if not passing.any():
        return None
    keys = scores.astype(np.float64)
    areas = np.clip(detections[:, 2] - detections[:, 0], 0, None) * \
        np.clip(detections[:, 3] - detections[:, 1], 0, None)
    if mode == "score_area":
        keys = keys * areas
    elif mode == "stable":
        tied = passing & (scores >= scores[passing].max() - NEAR_TIE)
        keys = np.where(tied, areas.astype(np.float64), -np.inf)
    keys = np.where(passing, keys, -np.inf)
    return int(np.argmax(keys))


OBJECT_OVERLAP = 0.7  # select_objects: a box overlapping a kept one this much (IoU) is the same object


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1, y1, x2, y2, ...) box with each of (n, >=4) boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def select_objects(detections: np.ndarray, threshold: float, count: int, main: int | None) -> list[int]:
    """Indices of up to `count` objects in (n, 6) detections: `main` first, then the others
    reaching `threshold` by descending score, leaving out a box that overlaps one already kept
    by OBJECT_OVERLAP or more (the same object found under two labels)."""
    if main is None or count <= 0:
        return []
    kept = [main]
    for i in np.argsort(-detections[:, 4], kind="stable").tolist():
        if len(kept) >= count or detections[i, 4] < threshold:
            break
        if i != main and box_iou(detections[i], detections[kept]).max() < OBJECT_OVERLAP:
            kept.append(i)
    return kept


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
