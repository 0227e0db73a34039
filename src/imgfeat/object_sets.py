"""Scoring images by their sets of objects (the `objects` column of `extract --objects K`).

An image stores up to K objects, the main one first, then the others by descending score (the
whole image when nothing was detected), so the first K' of them are what `--objects K'` would
store. Two images are compared through every pair of their objects:

    max       distance = the smallest distance over all pairs (cosine: the best cosine); a copy
              is found when ANY of its objects matches any of the query's
    chamfer   distance = the mean over the query's objects of the smallest distance to the
              item's objects (1 - Chamfer similarity); an item must hold ALL the query's objects
              to score well, and the score is not symmetric

    sets = ObjectSets(vectors, counts)                   # flattened: image by image, main first
    pairs = cosine_distances(queries.vectors, items.vectors)           # (query objects, item objects)
    distances = set_distances(pairs, queries.counts, items.counts, "max")  # (query images, items)

The pure functions take flattened arrays and per-image counts (every count >= 1); the full pair
matrix is built once and reduced per (query image, item) with ufunc.reduceat, no Python loop
over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ConfigError
from .metrics import cosine_distances, hamming_distances

REDUCTIONS = ("max", "chamfer")


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """Start of each image's objects in the flattened arrays."""
    counts = np.asarray(counts, np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def prefix_rows(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The flattened rows of each image's first `k` objects, and the images' new counts.

    Args:
        counts: (n,) objects per image (>= 1).
        k: objects kept per image (>= 1).

    Returns:
        rows: indices into the flattened arrays, image by image, in order.
        counts: (n,) min(count, k).

    Example:
        >>> prefix_rows(np.array([3, 1, 2]), 2)
        (array([0, 1, 3, 4, 5]), array([2, 1, 2]))
    """
    if k < 1:
        raise ConfigError(f"a prefix keeps at least 1 object per image, got {k}")
    counts = np.asarray(counts, np.int64)
    position = np.arange(int(counts.sum())) - np.repeat(offsets_of(counts), counts)
    return np.flatnonzero(position < k), np.minimum(counts, k)


def set_distances(pair_distances: np.ndarray, query_counts: np.ndarray, item_counts: np.ndarray,
                  reduction: str = "max") -> np.ndarray:
    """Reduce distances between objects to distances between images (smaller is closer).

    Args:
        pair_distances: (query objects, item objects), flattened image by image (any distance:
            1 - cosine, Hamming fraction).
        query_counts, item_counts: objects per query image / per item, each >= 1, summing to
            the matrix's rows / columns.
        reduction: "max" (the closest pair: max similarity) or "chamfer" (mean over the query's
            objects of the closest of the item's objects).

    Returns:
        (query images, items) float array.

    Raises:
        ConfigError: an unknown reduction, a count below 1, or counts that do not fit the matrix.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    pair_distances = np.asarray(pair_distances)
    query_counts, item_counts = np.asarray(query_counts, np.int64), np.asarray(item_counts, np.int64)
    if (query_counts < 1).any() or (item_counts < 1).any():
        raise ConfigError("every image needs at least one object (the whole image when none was detected)")
    if pair_distances.shape != (query_counts.sum(), item_counts.sum()):
        raise ConfigError(f"counts sum to {query_counts.sum()} x {item_counts.sum()} objects, "
                          f"the distances are {pair_distances.shape[0]} x {pair_distances.shape[1]}")
    # each query object's closest object of each item: (query objects, items)
    closest = np.minimum.reduceat(pair_distances, offsets_of(item_counts), axis=1)
    if reduction == "max":
        return np.minimum.reduceat(closest, offsets_of(query_counts), axis=0)
    return np.add.reduceat(closest.astype(np.float64), offsets_of(query_counts), axis=0) / query_counts[:, None]


@dataclass
class ObjectSets:
    """The objects of some images, flattened: `counts[i]` consecutive rows per image, main first."""

    vectors: np.ndarray  # (m, dim) L2-normalised object vectors
    counts: np.ndarray  # (n,) objects per image, >= 1
    labels: list[str | None]  # (m,) detector label; None for the whole image (nothing detected)

    def prefix(self, k: int) -> "ObjectSets":
        """The first `k` objects of every image: what `extract --objects k` stores."""
        rows, counts = prefix_rows(self.counts, k)
        return ObjectSets(self.vectors[rows], counts, [self.labels[r] for r in rows])

    def first(self) -> np.ndarray:
        """(n, dim) each image's first object: the main object (the `embedding` column)."""
        return self.vectors[offsets_of(self.counts)]


def object_set_distances(queries: ObjectSets, items: ObjectSets, k: int, reductions: tuple[str, ...] = REDUCTIONS,
                         code_bits: tuple[int, ...] = (), seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """Image-to-image distances of the first `k` objects of each image, per reduction.

    The floats are scored with every reduction; random-projection codes (rproj, as the rest of
    the benchmark codes vectors) with the Hamming distance of the closest pair ("max") only.

    Returns:
        {key: (distances (query images, items), bits per object)}, keys "<reduction>/float" and
        "max/rproj-<bits>".
    """
    from .models.hashing import RandomProjectionHasher

    queries, items = queries.prefix(k), items.prefix(k)
    out: dict[str, tuple[np.ndarray, int]] = {}
    pairs = cosine_distances(queries.vectors, items.vectors)
    for reduction in reductions:
        out[f"{reduction}/float"] = (set_distances(pairs, queries.counts, items.counts, reduction),
                                     32 * queries.vectors.shape[1])
    for bits in code_bits:
        hasher = RandomProjectionHasher(queries.vectors.shape[1], bits, seed)
        pairs = hamming_distances(hasher(queries.vectors), hasher(items.vectors))
        out[f"max/rproj-{bits}"] = (set_distances(pairs, queries.counts, items.counts, "max"), bits)
    return out


def set_results(queries: ObjectSets, items: ObjectSets, k: int, code_bits: tuple[int, ...], seed: int,
                score: Callable[[np.ndarray, int, bool], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Score every prefix K' = 1..k of the object lists, each reduction, as a benchmark's results.

    Args:
        queries, items: the query images' and the items' objects (up to k each).
        k: the most objects per image.
        code_bits: random-projection code lengths scored with the "max" reduction.
        seed: the projections' seed.
        score: (distances, bits, is_code) -> the benchmark's scores of one method.

    Returns:
        {"objects<K'>-<reduction>/<method>": scores}, e.g. "objects3-chamfer/float",
        "objects1-max/rproj-256" (K' = 1 is the main object alone: the object vector's scores).
    """
    results = {}
    for prefix in range(1, k + 1):
        for key, (distances, bits) in object_set_distances(queries, items, prefix, REDUCTIONS, code_bits,
                                                           seed).items():
            results[f"objects{prefix}-{key}"] = score(distances, bits, not key.endswith("/float"))
    return results


def objects_per_image(sets: ObjectSets, k: int) -> dict[str, float]:
    """Mean objects per image at each prefix K' = 1..k (what `--objects K'` stores: each beyond
    the first costs one embedder pass), and the share of images where nothing was detected."""
    first = offsets_of(sets.counts)
    return {"mean_objects": {str(prefix): float(np.minimum(sets.counts, prefix).mean()) for prefix in range(1, k + 1)},
            "nothing_detected": float(np.mean([sets.labels[i] is None for i in first]))}
