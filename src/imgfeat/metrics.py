"""Retrieval metrics over distance matrices: pure functions, reusable by any benchmark.

    top1_accuracy(distances, relevant)          share of queries whose nearest item is relevant
    mean_average_precision(distances, relevant)
    precision_recall(distances, relevant, threshold); best_f1(distances, relevant)
    hamming_distances(query_codes, codes); cosine_distances(queries, vectors)

Ties in distance are broken at random (seeded), so long runs of equal Hamming distances
neither help nor hurt a method on average.
"""

from __future__ import annotations

import numpy as np


def rank_order(distances: np.ndarray, seed: int = 0) -> np.ndarray:
    """Database indices of each query sorted by distance, ties broken at random (seeded).

    Args:
        distances: (queries, database) smaller is closer.
        seed: seed of the tie-breaking.

    Returns:
        (queries, database) int array of indices, nearest first.
    """
    distances = np.asarray(distances, dtype=np.float64)
    tie_break = np.random.default_rng(seed).random(distances.shape)
    return np.lexsort((tie_break, distances), axis=1)


def average_precision(relevance_in_rank_order: np.ndarray) -> float:
    """Average precision of one ranked list of 0/1 relevances (0.0 when nothing is relevant)."""
    relevance = np.asarray(relevance_in_rank_order, dtype=bool)
    if not relevance.any():
        return 0.0
    hits = np.cumsum(relevance)
    positions = np.flatnonzero(relevance)
    return float(np.mean(hits[positions] / (positions + 1)))


def top1_accuracy(distances: np.ndarray, relevant: np.ndarray, seed: int = 0) -> float:
    """Share of queries whose nearest item is relevant. `relevant`: (queries, database) bool."""
    order = rank_order(distances, seed)
    return float(np.mean(np.take_along_axis(np.asarray(relevant, bool), order[:, :1], axis=1)))


def mean_average_precision(distances: np.ndarray, relevant: np.ndarray, seed: int = 0) -> float:
    """Mean over queries of the average precision of the ranking by distance."""
    order = rank_order(distances, seed)
    ranked = np.take_along_axis(np.asarray(relevant, bool), order, axis=1)
    return float(np.mean([average_precision(row) for row in ranked]))


def precision_recall(distances: np.ndarray, relevant: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision and recall of calling every (query, item) pair with distance <= threshold a duplicate.

    Returns:
        precision (1.0 when no pair is called), recall, f1, and the number of pairs called.
    """
    predicted = np.asarray(distances) <= threshold
    relevant = np.asarray(relevant, bool)
    true_positives = int((predicted & relevant).sum())
    called = int(predicted.sum())
    precision = true_positives / called if called else 1.0
    recall = true_positives / max(int(relevant.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pairs_called": called}


def best_f1(distances: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """The threshold (one of the observed distances) with the best F1, and its precision/recall."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    relevant = np.asarray(relevant, bool).ravel()
    order = np.argsort(distances, kind="stable")
    sorted_distances, hits = distances[order], np.cumsum(relevant[order])
    # only the last position of each run of equal distances is a real threshold
    last = np.r_[sorted_distances[1:] != sorted_distances[:-1], True]
    called = np.arange(1, len(distances) + 1)[last]
    true_positives = hits[last]
    precision = true_positives / called
    recall = true_positives / max(int(relevant.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    best = int(np.argmax(f1))
    return {"f1": float(f1[best]), "threshold": float(sorted_distances[last][best]),
            "precision": float(precision[best]), "recall": float(recall[best])}


def hamming_distances(query_codes: np.ndarray, database_codes: np.ndarray) -> np.ndarray:
    """(queries, database) Hamming distances between packed uint8 codes, as a fraction of the bits."""
    query_bits = np.unpackbits(np.asarray(query_codes, np.uint8), axis=1).astype(np.float32)
    database_bits = np.unpackbits(np.asarray(database_codes, np.uint8), axis=1).astype(np.float32)
    bits = query_bits.shape[1]
    agree = query_bits @ database_bits.T + (1 - query_bits) @ (1 - database_bits).T
    return (bits - agree) / bits


def cosine_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of L2-normalised vectors."""
    return 1.0 - np.asarray(queries, np.float32) @ np.asarray(database, np.float32).T


# ---------------------------------------------------------------- the benchmark
