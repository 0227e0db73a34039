"""Tiny deterministic models for fast tests; registered as "test-*". Pure numpy, no weights.

- "test-blob" detector: one box around the pixels that differ from the border colour
  (a coloured object on a plain background), score 0.9; nothing on a plain image.
- "test-blobs" detector: one box per colour that differs from the border colour (several
  objects), score 0.5 + 0.4 x its share of the coloured pixels (the largest is the main one).
- "test-tiny" embedder: the crop downsampled to 8x8, times a seeded random matrix, 64-d.
"""

from __future__ import annotations

import numpy as np

from .preprocess import l2_normalize, resize
from .registry import register_detector, register_embedder


class BlobDetector:
    name = "test-blob"
    labels = ("blob",)
    digest = "test"

    def __init__(self, threshold: int = 40, **_: object):
        self.threshold = threshold

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """Pixels differing from the border's median colour by more than the threshold."""
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.int16)
        background = np.median(border, axis=0)
        return np.abs(image.astype(np.int16) - background).max(axis=2) > self.threshold

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        results = []
        for image in images:
            mask = self.foreground(image)
            if not mask.any():
                results.append(np.zeros((0, 6), dtype=np.float32))
                continue
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9, 0]
            results.append(np.asarray([box], dtype=np.float32))
        return results


class BlobsDetector(BlobDetector):
    name = "test-blobs"

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        results = []
        for image in images:
            mask = self.foreground(image)
            colours, which = np.unique(image[mask].reshape(-1, 3) // 32, axis=0, return_inverse=True)
            ys, xs = np.nonzero(mask)
            boxes = []
            for colour in range(len(colours)):
                mine = which.reshape(-1) == colour
                boxes.append([xs[mine].min(), ys[mine].min(), xs[mine].max() + 1, ys[mine].max() + 1,
                              0.5 + 0.4 * mine.sum() / max(1, mask.sum()), 0])
            results.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 6))
        return results


class TinyEmbedder:
    name = "test-tiny"
    digest = "test"
    dim = 64

    def __init__(self, seed: int = 1, **_: object):
        self.matrix = np.random.default_rng(seed).standard_normal((8 * 8 * 3, self.dim)).astype(np.float32)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        small = np.stack([resize(c, (8, 8)) for c in crops]).reshape(len(crops), -1).astype(np.float32)
        return l2_normalize((small / 255.0 - 0.5) @ self.matrix)


@register_detector("test-blob", description="finds one coloured box on white (tests only)")
def _blob(**kwargs) -> BlobDetector:
    return BlobDetector(**{k: v for k, v in kwargs.items() if k == "threshold"})


@register_detector("test-blobs", description="one box per coloured region on white (tests only)")
def _blobs(**kwargs) -> BlobsDetector:
    return BlobsDetector(**{k: v for k, v in kwargs.items() if k == "threshold"})


@register_embedder("test-tiny", description="8x8 thumbnail times a seeded random matrix, 64-d (tests only)")
def _tiny(**kwargs) -> TinyEmbedder:
    return TinyEmbedder()
