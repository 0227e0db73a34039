"""What every near-duplicate run shares, local or on an engine: the argument checks, the vector
choice, the reviews, connected components and the groups frame (dedup.py runs locally,
buckets.py plans and joins for Spark and Ray; both build their output here).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from ..dataset import crop_kind
from ..errors import ConfigError
from .reviews import load_reviews

REPRESENTATIVES = ("largest", "first")
USING = ("embedding", "code")  # float vectors by cosine, binary codes by Hamming distance
GROUP_COLUMNS = ("group", "id", "path", "is_representative", "score", "size", "width", "height",
                 "box", "label")


def _components(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes, given undirected edges."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
    except ImportError:
        return _union_find(n, lo, hi)
    graph = coo_matrix((np.ones(len(lo), np.int8), (lo, hi)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


def _union_find(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Components by repeated label propagation over the edges (numpy only)."""
    parent = np.arange(n)
    while True:
        low = np.minimum(parent[lo], parent[hi])
        before = parent.copy()
        np.minimum.at(parent, lo, low)
        np.minimum.at(parent, hi, low)
        parent = parent[parent]  # pointer jumping
        if np.array_equal(parent, before):
            return parent


def resolve_vector(datasets: Sequence[Any], vector: str) -> str:
    """ "image" or "object" for `vector` ("auto": the whole image where all the features hold it:
    copies, not the same products)."""
    if vector != "auto":
        return vector
    return "image" if all("image_embedding" in d.schema.names or crop_kind(d) == "whole-image"
                          for d in datasets) else "object"


def check_arguments(threshold: float, representative: str) -> None:
    """Raises ConfigError for a threshold outside (0, 1] or an unknown representative rule."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold is a cosine similarity in (0, 1], got {threshold}")
    if representative not in REPRESENTATIVES:
        raise ConfigError(f"representative must be one of {', '.join(REPRESENTATIVES)}, got {representative!r}")


def review_records(reviews: str | os.PathLike | Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The review records of a reviews.jsonl path, or the records themselves."""
    return load_reviews(reviews) if isinstance(reviews, (str, os.PathLike)) else list(reviews or [])


def describe_groups(members: Any, vectors_of: Callable[[np.ndarray], np.ndarray], representative: str,
                    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Any:
    """Group numbers (largest first), representatives and member scores: the output frame.

    Args:
        members: one row per member of a group of two or more: index "id", columns faiss_id
            (any integer that sorts in indexing order), component, and the index's metadata
            columns (path, width, height, x1..y2, label).
        vectors_of: unit vectors (or packed codes) of an array of faiss_id values.
        representative: one of REPRESENTATIVES.
        similarity: score of row pairs of two vectors_of arrays (default: their dot product,
            the cosine of unit vectors).
    """
    import pandas as pd

    if members.empty:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in (
            ("group", "int64"), ("id", "str"), ("path", "str"), ("is_representative", "bool"),
            ("score", "float32"), ("size", "int64"), ("width", "Int64"), ("height", "Int64"),
            ("box", "object"), ("label", "str"))})
    members = members.reset_index()
    members["pixels"] = (members["width"].fillna(0).astype(np.int64) * members["height"].fillna(0).astype(np.int64))
    members["size"] = members.groupby("component")["faiss_id"].transform("size")
    # groups: largest first, then by their first member; members: by label (indexing order)
    members = members.sort_values(["faiss_id"], kind="stable")
    first_label = members.groupby("component")["faiss_id"].transform("min")
    members = members.assign(first_label=first_label).sort_values(
        ["size", "first_label", "faiss_id"], ascending=[False, True, True], kind="stable")
    members["group"] = pd.factorize(members["component"])[0]
    if representative == "largest":
        order = members.sort_values(["group", "pixels", "faiss_id"], ascending=[True, False, True], kind="stable")
    else:
        order = members.sort_values(["group", "faiss_id"], kind="stable")
    rep_label = order.groupby("group")["faiss_id"].first()
    members["representative"] = members["group"].map(rep_label)
    members["is_representative"] = members["faiss_id"] == members["representative"]
    vectors = vectors_of(members["faiss_id"].to_numpy())
    rep_vectors = vectors_of(members["representative"].to_numpy())
    scores = similarity(vectors, rep_vectors) if similarity else np.einsum("ij,ij->i", vectors, rep_vectors)
    members["score"] = np.clip(scores, -1.0, 1.0).astype(np.float32)
    members["box"] = [None if np.isnan([a, b, c, d]).any() else [float(a), float(b), float(c), float(d)]
                      for a, b, c, d in members[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)]
    members = members.sort_values(["group", "is_representative", "score", "faiss_id"],
                                  ascending=[True, False, False, True], kind="stable")
    frame = members[list(GROUP_COLUMNS)].reset_index(drop=True)
    return frame.astype({"group": "int64", "size": "int64", "width": "Int64", "height": "Int64"})
