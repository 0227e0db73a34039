"""Near-duplicate groups: every pair within a cosine threshold, found with the index.

    groups = find_duplicates("features/", threshold=0.92)      # a DataFrame, one row per member
    groups.to_parquet("groups.parquet")

How: the vectors go into a FAISS index (exact IndexFlatIP below 100 000 vectors, IVF-Flat
above: exact scores, approximate neighbour lists), then each chunk of vectors is range-searched
against it for neighbours with similarity >= threshold (at most `max_neighbors` each: enough to
connect a group). Pairs a reviewer marked "not-duplicate" are dropped. Groups are the connected
components of the pair graph (scipy.sparse.csgraph); each gets a representative: the largest
image (width x height) or the first indexed. Memory is the index (n x dim floats) plus one
chunk of results; nothing is all-pairs.

With using="code" the packed binary codes are compared instead: pairs at most `max_hamming`
bits apart (default: the cosine threshold's match, acos(T) / pi of the bits, as the evaluator),
range-searched exactly with a FAISS binary flat index below 100 000 codes; above it exactly
with multi-index hashing (IndexBinaryMultiHash: max_hamming + 1 parts of the code, a pair within
max_hamming bits agrees on one whole part) where the parts keep 16 bits or more, else with a
binary IVF index (nprobe 8: not exact, as the float path's IVF); the groups, representatives and frame are built as on Spark and Ray (buckets.py), a
member's score being 1 - h / bits to its representative (as `search --using code`).

Reviews (reviews.py) live in a JSON Lines file beside the groups by default; pairs inside a
"not-duplicate" record are dropped.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..dataset import INDEX_JSON, open_features
from ..errors import ConfigError
from ..schema import STATUS_OK
from ..storage import atomic_local_path
from .faiss_kinds import FLAT_MAX_VECTORS
from .index import FeatureIndex
from .sharded import ShardedIndex
from .groups import (  # noqa: F401  (re-exported: the names dedup's callers and tests know)
    GROUP_COLUMNS, REPRESENTATIVES, USING, _components, _union_find, check_arguments, describe_groups, resolve_vector,
    review_records,
)
from .reviews import default_reviews_path, load_reviews, not_duplicate_sets  # noqa: F401  (re-exported)

# binary indexes of using="code"; auto: flat below FLAT_MAX_VECTORS, else mih where its parts hold
# at least MIH_MIN_PART_BITS bits (tables of 2^16+ values: few false candidates), else ivf
CODE_KINDS = ("auto", "flat", "mih", "ivf")
DEDUP_NPROBE = 8  # near-duplicates share a cell or a neighbouring one: few lists suffice


# The default similarity of duplicates, for whole-image vectors of the default embedder: on the
# 14 sample photos and a half-size JPEG-40 copy of each, copies scored at least 0.883 and distinct
# photos at most 0.832 (benchmarks/copy_similarity.py, tests/test_neardup_defaults.py); 0.85 sits
# between. It favours recall: 0.87 gives the precision of the older, stretched vectors at 0.85
# (docs/search.md).
DEFAULT_THRESHOLD = 0.85

def _review_keys(index: FeatureIndex, reviews: Sequence[dict[str, Any]], width: int) -> np.ndarray:
    """Pair keys lo * width + hi of every label pair inside a not-duplicate set."""
    keys = []
    for ids in not_duplicate_sets(reviews):
        known = [i for i in ids if index.contains(i)]
        if len(known) < 2:
            continue
        labels = np.sort(index.labels_of(known))
        lo, hi = np.triu_indices(len(labels), k=1)
        keys.append(labels[lo] * width + labels[hi])
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


# --- groups ---------------------------------------------------------------------------------

def _open_index(source: Any, kind: str, vector: str) -> FeatureIndex:
    """The index to search: `source` itself, an index folder, or one built from feature
    folders (several are indexed together) over their `vector` vectors."""
    if isinstance(source, FeatureIndex):
        return source
    if isinstance(source, ShardedIndex):
        raise ConfigError("dedup needs one index or the features: a sharded index's parts do not see each "
                          "other's pairs; give the feature folders (or `--engine spark|ray` for many)")
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if len(sources) == 1 and os.path.exists(os.path.join(os.fspath(sources[0]), INDEX_JSON)):
        return FeatureIndex.load(sources[0])
    vector = resolve_vector([open_features(s) for s in sources], vector) if vector == "auto" else vector
    if kind == "auto":
        count = sum(open_features(s).count(STATUS_OK) for s in sources)
        # exact below the flat limit; above it IVF-Flat: its scores are exact (no compression),
        # so the threshold means the same thing, and only far-away cells are skipped
        kind = "flat" if count < FLAT_MAX_VECTORS else "ivf"
    index = FeatureIndex.build(sources[0], kind=kind, codes=False, vector=vector)
    for more in sources[1:]:
        index.add(more)
    return index


def pairs_within(index: FeatureIndex, vectors: np.ndarray, labels: np.ndarray, threshold: float,
                 max_neighbors: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query label, neighbour label, score) with cosine >= threshold, self pairs dropped,
    each query keeping at most its `max_neighbors` best (enough to connect a group)."""
    rows, found, scores = index.range_search(vectors, threshold, max_neighbors)
    query_labels = np.asarray(labels, np.int64)[rows]
    keep = found != query_labels
    rows, query_labels, found, scores = rows[keep], query_labels[keep], found[keep], scores[keep]
    if max_neighbors and len(rows):
        order = np.lexsort((-scores, rows))  # by query, then by score descending
        sorted_rows = rows[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
        keep = np.sort(order[rank < max_neighbors])
        query_labels, found, scores = query_labels[keep], found[keep], scores[keep]
    return query_labels, found, scores


def find_duplicates(source: Any, threshold: float = DEFAULT_THRESHOLD, *, representative: str = "largest",
                    reviews: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
                    kind: str = "auto", max_neighbors: int = 100, chunk_rows: int = 16384,
                    nprobe: int | None = None, vector: str = "auto", using: str = "embedding",
                    max_hamming: int | None = None) -> Any:
    """Group near-duplicate images: all pairs with cosine similarity >= threshold, joined.

    Args:
        source: a feature folder (local or URL), several of them (grouped together), an index
            folder, or a FeatureIndex.
        threshold: cosine similarity of two embeddings to call them duplicates (0-1; default
            DEFAULT_THRESHOLD, 0.85, for whole-image vectors of the default embedder: docs/search.md).
        representative: "largest" (most pixels; ties: first) or "first" (first indexed).
        reviews: a reviews.jsonl path, or its records: pairs inside a "not-duplicate"
            record are dropped.
        kind: index kind when building from features ("auto": flat below 100k, else ivf).
        max_neighbors: neighbours kept per image (its best); bounds memory on huge groups.
        chunk_rows: vectors range-searched at a time.
        nprobe: inverted lists visited per query for ivf/ivfpq (default 8 when `source` is a
            path, as near-duplicates sit in nearby cells; a FeatureIndex object keeps its own).
        vector: which vectors to compare when `source` is features: "image" (the whole image:
            copies, resized, re-encoded, captioned), "object" (the main object's), or "auto"
            (default): "image" when the features hold whole-image vectors. An index keeps its own.
        using: "embedding" (default: cosine of the float vectors) or "code": Hamming distance
            of the binary codes (feature folders only; kind "auto", "flat" or "ivf").
        max_hamming: with using="code", the most differing bits of a pair (default:
            floor(bits * acos(threshold) / pi), the evaluator's code threshold).

    Returns:
        pandas.DataFrame, one row per member of a group of two or more: group (0 = largest
        group), id, path, is_representative, score (cosine to the representative; codes:
        1 - h / bits), size, width, height, box, label. `frame.attrs["stats"]` holds counts
        and seconds.

    Raises:
        ConfigError: a threshold outside (0, 1], an unknown representative rule, a
            malformed reviews file, or using="code" on an index or without codes.
    """
    if using not in USING:
        raise ConfigError(f"using must be one of {', '.join(USING)}, got {using!r}")
    if using == "code":
        return find_code_duplicates(source, threshold, representative=representative, reviews=reviews,
                                    kind=kind, max_neighbors=max_neighbors, chunk_rows=chunk_rows,
                                    nprobe=nprobe, vector=vector, max_hamming=max_hamming)
    if max_hamming is not None:
        raise ConfigError("max_hamming is for using='code' (binary codes); embeddings use the threshold")
    check_arguments(threshold, representative)
    started = time.perf_counter()
    index = _open_index(source, kind, vector)
    indexed = time.perf_counter()
    if nprobe is not None or (not isinstance(source, FeatureIndex) and index.kind in ("ivf", "ivfpq")):
        index.params["nprobe"] = nprobe or DEDUP_NPROBE
    records = review_records(reviews)
    width = max(index.next_label, 1)
    review_keys = _review_keys(index, records, width)

    pair_keys = []
    dropped = 0
    for labels, vectors in index.iter_vectors(chunk_rows):
        queries, neighbours, _ = pairs_within(index, vectors, labels, threshold, max_neighbors)
        pair_keys.append(np.unique(np.minimum(queries, neighbours) * width + np.maximum(queries, neighbours)))
    keys = np.unique(np.concatenate(pair_keys)) if pair_keys else np.zeros(0, np.int64)
    if len(review_keys):  # each pair once, whichever direction found it
        reviewed = np.isin(keys, review_keys)
        dropped = int(reviewed.sum())
        keys = keys[~reviewed]
    searched = time.perf_counter()

    lo, hi = keys // width, keys % width
    component = _components(width, lo, hi)
    live = index.metadata_frame()
    live_labels = live["faiss_id"].to_numpy().astype(np.int64)
    sizes = np.bincount(component[live_labels], minlength=width)
    in_group = sizes[component[live_labels]] >= 2
    members = live.iloc[np.flatnonzero(in_group)].copy()
    members["component"] = component[live_labels[in_group]]
    frame = describe_groups(members, index.vectors_of_labels, representative)
    stats = {
        "vectors": len(index), "vector": "image" if index.crop == "whole-image" else "object", "kind": index.kind,
        "threshold": threshold, "using": "embedding", "pairs": int(len(keys)),
        "pairs_dropped_by_reviews": dropped, "groups": int(frame["group"].nunique()) if len(frame) else 0,
        "images_in_groups": int(len(frame)), "seconds_index": round(indexed - started, 3),
        "seconds_search": round(searched - indexed, 3),
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    frame.attrs["stats"] = stats
    return frame


def find_code_duplicates(source: Any, threshold: float = DEFAULT_THRESHOLD, *, representative: str = "largest",
                         reviews: str | os.PathLike | Sequence[dict[str, Any]] | None = None, kind: str = "auto",
                         max_neighbors: int = 100, chunk_rows: int = 16384, nprobe: int | None = None,
                         vector: str = "auto", max_hamming: int | None = None) -> Any:
    """find_duplicates(using="code"): groups of codes at most max_hamming bits apart.

    All codes are read into memory (bits / 8 bytes each, plus the ids), indexed in a FAISS
    binary index (flat: exact; mih: multi-index hashing with max_hamming + 1 tables of
    bits // (max_hamming + 1) bits, exact; ivf: nlist sqrt(n), nprobe visited lists) and
    range-searched chunk by chunk; each code keeps its `max_neighbors` nearest.

    Raises:
        ConfigError: as find_duplicates, an index as source, an unknown kind, or no codes.
    """
    from .buckets import (components_of_pairs, default_nlist, file_numbers, groups_frame, prepare, read_members,
                          read_vectors, reviewed_pairs, using_stats)
    from .buckets import MIH_MIN_PART_BITS
    from .faiss_kinds import faiss_module

    if isinstance(source, FeatureIndex):
        raise ConfigError("dedup using codes reads feature folders, not an index (give the features)")
    if kind not in CODE_KINDS:
        raise ConfigError(f"kind must be one of {', '.join(CODE_KINDS)} for codes, got {kind!r}")
    started = time.perf_counter()
    _, plan = prepare(source, threshold, representative, reviews, vector, nlist=0, probes=1,
                      max_neighbors=max_neighbors, seed=0, using="code", max_hamming=max_hamming)
    parts = [read_vectors(plan, number) for number in range(len(plan.files))]
    keys = np.concatenate([part["key"] for part in parts])
    ids = np.concatenate([part["id"] for part in parts])
    codes = np.ascontiguousarray(np.concatenate([part["vector"] for part in parts]))
    del parts
    faiss = faiss_module()
    n, radius = len(codes), plan.max_hamming
    part_bits = plan.bits // (radius + 1)
    if kind == "auto":
        kind = "flat" if n < FLAT_MAX_VECTORS else "mih" if part_bits >= MIH_MIN_PART_BITS else "ivf"
    if kind == "flat" or (kind == "mih" and not part_bits):  # a radius of every bit: all pairs
        kind, index = "flat", faiss.IndexBinaryFlat(plan.bits)
    elif kind == "mih":
        # pigeonhole: radius + 1 disjoint parts, a pair at most radius bits apart differs in at
        # most radius of them, so it agrees exactly on one: looked up with no bit flips
        index = faiss.IndexBinaryMultiHash(plan.bits, radius + 1, part_bits)
        index.nflip = 0
    else:
        quantizer = faiss.IndexBinaryFlat(plan.bits)
        nlist = default_nlist(n)
        index = faiss.IndexBinaryIVF(quantizer, plan.bits, nlist)  # faiss's wrapper keeps the quantizer alive
        sample = np.random.default_rng(0).choice(n, min(n, nlist * 64), replace=False)
        index.train(codes[np.sort(sample)])
        index.nprobe = nprobe or DEDUP_NPROBE
    index.add(codes)
    indexed = time.perf_counter()

    found = []
    for start in range(0, n, chunk_rows):
        # faiss keeps distances strictly below the radius
        limits, distances, labels = index.range_search(codes[start:start + chunk_rows], radius + 1)
        rows = np.repeat(np.arange(start, min(n, start + chunk_rows)), np.diff(limits).astype(np.int64))
        keep = (labels != rows) & (distances <= radius)
        rows, labels, distances = rows[keep], labels[keep].astype(np.int64), distances[keep]
        if max_neighbors and len(rows):  # each code keeps its nearest
            order = np.lexsort((distances, rows))
            sorted_rows = rows[order]
            rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
            keep = np.sort(order[rank < max_neighbors])
            rows, labels = rows[keep], labels[keep]
        found.append(np.unique(np.minimum(rows, labels) * n + np.maximum(rows, labels)))
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    lo, hi = keys[pairs // max(n, 1)], keys[pairs % max(n, 1)]
    reviewed = reviewed_pairs(plan, lo, hi, keys, ids)
    lo, hi = lo[~reviewed], hi[~reviewed]
    searched = time.perf_counter()

    component_keys, components = components_of_pairs(lo, hi)
    files = file_numbers(component_keys)
    pieces = [read_members(plan, int(number), component_keys[files == number]) for number in np.unique(files)]
    import pandas as pd

    members = pd.concat(pieces) if pieces else read_members(plan, 0, np.zeros(0, np.int64))
    frame = groups_frame(members, component_keys, components, representative, codes=True)
    frame.attrs["stats"] = {
        "vectors": n, "vector": plan.vector, "kind": kind, "threshold": threshold, **using_stats(plan),
        "pairs": int(len(lo)), "pairs_dropped_by_reviews": int(reviewed.sum()),
        "groups": int(frame["group"].nunique()) if len(frame) else 0, "images_in_groups": int(len(frame)),
        "seconds_index": round(indexed - started, 3), "seconds_search": round(searched - indexed, 3),
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    return frame


# engines of `imgfeat dedup --engine`: module and function, imported on use (pyspark and ray are extras)
DEDUP_ENGINES = {"local": (__name__, "find_duplicates"),
                 "spark": (__package__ + ".dedup_spark", "find_duplicates_spark"),
                 "ray": (__package__ + ".dedup_ray", "find_duplicates_ray")}


def dedup_engine(name: str) -> Callable[..., Any]:
    """The grouping function of an engine (find_duplicates and its Spark and Ray twins).

    Raises:
        ConfigError: an unknown engine.
    """
    import importlib

    if name not in DEDUP_ENGINES:
        raise ConfigError(f"unknown dedup engine {name!r}: one of {', '.join(DEDUP_ENGINES)}")
    module, function = DEDUP_ENGINES[name]
    return getattr(importlib.import_module(module), function)


def write_groups(frame: Any, path: str | os.PathLike) -> None:
    """Write the groups DataFrame to Parquet, atomically (folder created when missing)."""
    with atomic_local_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
