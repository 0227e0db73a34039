"""What a model must provide to run in the pipeline: typing Protocols, checked by their use.

A new detector or embedder is a class with these attributes and a `__call__`, registered with
`models.registry.register_detector` / `register_embedder` (a factory taking device, threads,
runtime). Learned hashes and the random projection satisfy `Hasher`.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Detector(Protocol):
    """Images in, per-image detections out.

    `__call__(images)` returns one float32 (n, 6) array per image: x1, y1, x2, y2, score,
    class index, boxes in the pixels of the image passed in, highest score first.
    """

    name: str  # recorded in every row and the manifest
    labels: Sequence[str]  # class index -> name ("" or missing: the index is used)
    digest: str | None  # fingerprint of the weights (the manifest), None when unknown

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]: ...


@runtime_checkable
class Embedder(Protocol):
    """RGB crops in, L2-normalised float32 (n, dim) vectors out."""

    name: str
    dim: int
    digest: str | None

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class Hasher(Protocol):
    """L2-normalised float vectors (n, dim) in, packed bits (n, bits // 8) uint8 out."""

    name: str
    bits: int

    def __call__(self, embeddings: np.ndarray) -> np.ndarray: ...
