"""Bucketed similarity join: the engine-free half of distributed near-duplicate grouping.

    plan = plan_buckets(dataset, threshold=0.85)                 # on the driver: files + centroids
    for file in plan.files:                                        # in a worker, one file each
        rows = read_vectors(plan, file)
        buckets = bucket_rows(plan, rows)                          # -> shuffled by bucket
    lo, hi, scores, dropped = join_bucket(plan, bucket_rows_of_one_bucket)   # in a worker

A coarse quantiser (spherical k-means, faiss, nlist = sqrt(n) as the IVF index) is trained on a
sample of the vectors read from a few random files. Every vector is *stored* in the bucket of
its nearest centroid and *probes* its `probes` nearest buckets (its own among them), so a pair
(a, b) is compared when b's bucket is among a's probes or the other way round: the recall of an
IVF index searched with nprobe = probes, which is what the local `dedup` does above 100 000
vectors. Inside a bucket the join is exact (a matrix product of probing x stored vectors, in
chunks), pairs a reviewer marked "not-duplicate" are dropped there, and each probing vector
keeps its `max_neighbors` best pairs of that bucket. Every row carries a key, (file number << 32) |
row in file, that sorts like the local index's labels, so groups, their order and their
representatives come out the same as the local ones.

Engines (dedup_spark.py, dedup_ray.py) move the rows between these functions; the groups are
the connected components of the pairs, described by dedup.describe_groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..dataset import FeatureDataset, embedding_matrix
from ..errors import ConfigError, SourceError
from ..schema import STATUS_OK
from .id_table import meta_columns
from .reviews import not_duplicate_sets

KEY_FILE_SHIFT = 32  # key = file number << 32 | row in file: sorts like the local labels
JOIN_CHUNK_VALUES = 1 << 24  # probing rows x stored rows scored at a time (64 MiB of float32)
SAMPLE_PER_BUCKET = 64  # training vectors per centroid (faiss warns below 39)


@dataclass(frozen=True)
class BucketPlan:
    """The picklable recipe every worker gets: where the rows are and how to bucket them.

    Attributes:
        fs: the fsspec filesystem of the files. files: their paths, in dataset order.
        column: the vector column compared. dim: its length.
        centroids: (nlist, dim) float32 unit vectors. probes: buckets each vector probes.
        threshold: cosine at or above which a pair is kept. max_neighbors: pairs kept per
            probing vector and bucket (0: all).
        reviewed: id -> numbers of the not-duplicate sets it belongs to.
        vector: "image" or "object" (what the column holds, for the figures).
        rows: rows in the files (all statuses), for sizing the shuffle.
    """

    fs: Any
    files: tuple[str, ...]
    column: str
    dim: int
    centroids: np.ndarray
    probes: int
    threshold: float
    max_neighbors: int
    reviewed: dict[str, frozenset[int]]
    vector: str = "image"
    rows: int = 0

    @property
    def nlist(self) -> int:
        return len(self.centroids)


def default_nlist(count: int) -> int:
    """Buckets for `count` vectors: sqrt(n) as the IVF index, enough training points each."""
    nlist = int(min(65536, max(1, round(math.sqrt(max(count, 1))))))
    return max(1, min(nlist, count // 39))


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def training_sample(dataset: FeatureDataset, column: str, size: int, seed: int = 0) -> np.ndarray:
    """About `size` unit vectors from whole files picked at random (not one pass over all of them:
    the driver reads only as many files as the sample needs)."""
    order = np.random.default_rng(seed).permutation(len(dataset.files))
    parts, held = [], 0
    for number in order:
        vectors = _read_file(dataset.fs, dataset.files[number], column, dataset.dim, [])[1]
        parts.append(vectors)
        held += len(vectors)
        if held >= 2 * size:
            break
    sample = np.concatenate(parts) if parts else np.zeros((0, dataset.dim), np.float32)
    if len(sample) > size:
        sample = sample[np.sort(np.random.default_rng(seed).choice(len(sample), size, replace=False))]
    return sample


def train_centroids(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (unit vectors) of the sample (faiss)."""
    import faiss

    nlist = max(1, min(nlist, len(sample)))
    if nlist == 1:
        return _normalize(sample.mean(axis=0, keepdims=True).astype(np.float32)) if len(sample) else sample
    kmeans = faiss.Kmeans(sample.shape[1], nlist, niter=20, spherical=True, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def plan_buckets(dataset: FeatureDataset, column: str, threshold: float, *, nlist: int | None = None,
                 probes: int = 8, max_neighbors: int = 100, reviews: Sequence[dict[str, Any]] = (),
                 seed: int = 0, vector: str = "image") -> BucketPlan:
    """Train the coarse quantiser on a sample and return the recipe for the workers.

    Raises:
        ConfigError: probes below 1. SourceError: no rows with status ok.
    """
    if probes < 1:
        raise ConfigError(f"probes must be at least 1, got {probes}")
    rows = 0
    for path in dataset.files:  # the footers only
        with dataset.fs.open(path, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    nlist = nlist or default_nlist(rows)
    sample = training_sample(dataset, column, nlist * SAMPLE_PER_BUCKET, seed)
    if not len(sample):
        raise SourceError(f"{dataset.location} has no rows with status ok to group")
    reviewed: dict[str, set[int]] = {}
    for number, ids in enumerate(not_duplicate_sets(reviews)):
        for item in ids:
            reviewed.setdefault(item, set()).add(number)
    centroids = train_centroids(sample, nlist, seed)
    return BucketPlan(dataset.fs, tuple(dataset.files), column, dataset.dim, centroids,
                      min(probes, len(centroids)), threshold, max_neighbors,
                      {k: frozenset(v) for k, v in reviewed.items()}, vector, rows)


# --- in the workers -------------------------------------------------------------------------

def _read_file(fs: Any, path: str, column: str, dim: int, extra: Sequence[str]) -> tuple[np.ndarray, np.ndarray, Any]:
    """(rows in file, unit vectors, table of `extra` columns) of the status-ok rows of one file."""
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=["status", column, *extra])
    ok = pc.equal(table.column("status"), STATUS_OK).to_numpy(zero_copy_only=False)
    positions = np.flatnonzero(ok)
    table = table.filter(ok)
    vectors = embedding_matrix(table.column(column), dim) if table.num_rows else np.zeros((0, dim), np.float32)
    return positions, _normalize(vectors), table


def read_vectors(plan: BucketPlan, number: int) -> dict[str, np.ndarray]:
    """The status-ok rows of file `number`: key, id and unit vector of each."""
    positions, vectors, table = _read_file(plan.fs, plan.files[number], plan.column, plan.dim, ["id"])
    keys = (np.int64(number) << KEY_FILE_SHIFT) | positions.astype(np.int64)
    return {"key": keys, "id": np.asarray(table.column("id").to_pylist(), dtype=object), "vector": vectors}


def read_members(plan: BucketPlan, number: int, keys: np.ndarray) -> Any:
    """Metadata and vectors of the rows of file `number` among `keys`, as a DataFrame with
    faiss_id (the key) and the index's metadata columns, vectors in a `vector` column."""
    import pandas as pd

    columns = ["id", "path", "width", "height", "box", "label", "score", "crop"]
    positions, vectors, table = _read_file(plan.fs, plan.files[number], plan.column, plan.dim, columns)
    file_keys = (np.int64(number) << KEY_FILE_SHIFT) | positions.astype(np.int64)
    wanted = np.flatnonzero(np.isin(file_keys, keys))
    table = table.take(wanted)
    table = pa.record_batch([column.combine_chunks() for column in table.columns], schema=table.schema)
    frame = pd.DataFrame({"faiss_id": file_keys[wanted], **meta_columns(table)},
                         index=pd.Index(table.column("id").to_pylist(), dtype=object, name="id"))
    frame["vector"] = list(vectors[wanted])
    return frame


def bucket_rows(plan: BucketPlan, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each row once per bucket it probes: bucket, stored (its own bucket), key, id, vector."""
    vectors = rows["vector"]
    if not len(vectors):
        return {"bucket": np.zeros(0, np.int64), "stored": np.zeros(0, bool), **rows}
    scores = vectors @ plan.centroids.T
    if plan.probes >= plan.nlist:
        nearest = np.argsort(-scores, axis=1)
    else:
        top = np.argpartition(-scores, plan.probes - 1, axis=1)[:, :plan.probes]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        nearest = np.take_along_axis(top, order, axis=1)
    count = nearest.shape[1]
    repeat = np.repeat(np.arange(len(vectors)), count)
    return {"bucket": nearest.reshape(-1).astype(np.int64),
            "stored": np.tile(np.arange(count) == 0, len(vectors)),
            "key": rows["key"][repeat], "id": rows["id"][repeat], "vector": vectors[repeat]}


def join_bucket(plan: BucketPlan, keys: np.ndarray, ids: np.ndarray, vectors: np.ndarray,
                stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The pairs of one bucket: (lo keys, hi keys, scores, pairs dropped by reviews), each
    pair once, cosine >= threshold, self pairs and reviewed pairs out."""
    base = np.flatnonzero(stored)
    found_lo, found_hi, found_scores = [], [], []
    if len(base):
        base_vectors = np.ascontiguousarray(vectors[base])
        step = max(1, JOIN_CHUNK_VALUES // len(base))
        for start in range(0, len(keys), step):
            scores = vectors[start:start + step] @ base_vectors.T
            rows, cols = np.nonzero(scores >= plan.threshold)
            query, found, values = keys[start + rows], keys[base[cols]], scores[rows, cols]
            keep = query != found
            rows, query, found, values = rows[keep], query[keep], found[keep], values[keep]
            if plan.max_neighbors and len(rows):  # each probing row keeps its best pairs
                order = np.lexsort((-values, rows))
                sorted_rows = rows[order]
                rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
                keep = np.sort(order[rank < plan.max_neighbors])
                query, found, values = query[keep], found[keep], values[keep]
            found_lo.append(np.minimum(query, found))
            found_hi.append(np.maximum(query, found))
            found_scores.append(values.astype(np.float32))
    if not found_lo:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    lo, hi, scores = np.concatenate(found_lo), np.concatenate(found_hi), np.concatenate(found_scores)
    _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    lo, hi, scores = lo[first], hi[first], scores[first]
    dropped = 0
    if plan.reviewed and len(lo):
        id_of = dict(zip(keys.tolist(), ids.tolist()))
        reviewed = np.array([bool(plan.reviewed.get(id_of[a], frozenset()) & plan.reviewed.get(id_of[b], frozenset()))
                             for a, b in zip(lo.tolist(), hi.tolist())], dtype=bool)
        dropped = int(reviewed.sum())
        lo, hi, scores = lo[~reviewed], hi[~reviewed], scores[~reviewed]
    return lo, hi, scores, dropped


def join_buckets(plan: BucketPlan, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The pairs (lo, hi) of every bucket among `rows` (bucket_rows of any files, one partition
    of the shuffle), how many reviews dropped, and how many vectors are stored there."""
    order = np.argsort(rows["bucket"], kind="stable")
    rows = {name: values[order] for name, values in rows.items()}
    _, starts = np.unique(rows["bucket"], return_index=True)
    bounds = list(starts) + [len(rows["bucket"])]
    found_lo, found_hi, dropped = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        lo, hi, _, reviewed = join_bucket(plan, rows["key"][start:stop], rows["id"][start:stop],
                                          rows["vector"][start:stop], rows["stored"][start:stop])
        found_lo.append(lo)
        found_hi.append(hi)
        dropped += reviewed
    return np.concatenate(found_lo), np.concatenate(found_hi), dropped, int(np.count_nonzero(rows["stored"]))


def components_of_pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, component) of every key in a pair: the component is the smallest key of its
    group (the local label propagation, on the driver: 16 bytes a pair)."""
    from .dedup import _components

    keys, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    component = _components(len(keys), inverse[:len(lo)], inverse[len(lo):])
    smallest = np.full(len(keys), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, component, keys)
    return keys, smallest[component]


# --- on the driver, around the engine -------------------------------------------------------

def prepare(source: Any, threshold: float, representative: str, reviews: Any, vector: str, *,
            nlist: int | None, probes: int, max_neighbors: int, seed: int) -> tuple[FeatureDataset, BucketPlan]:
    """Check the arguments as the local dedup does, open the features, pick the vector column
    (the whole image's by default, as the local dedup) and plan the buckets."""
    from ..dataset import open_features
    from .dedup import check_arguments, resolve_vector, review_records
    from .index import VECTORS, vector_columns

    check_arguments(threshold, representative)
    if vector not in VECTORS + ("auto",):
        raise ConfigError(f"vector must be one of {', '.join(VECTORS)} or auto, got {vector!r}")
    dataset = open_features(source)
    vector = resolve_vector([dataset], vector)
    column = vector_columns(dataset, "whole-image" if vector == "image" else "object")[0]
    plan = plan_buckets(dataset, column, threshold, nlist=nlist, probes=probes, max_neighbors=max_neighbors,
                        reviews=review_records(reviews), seed=seed, vector=vector)
    return dataset, plan


def file_numbers(keys: np.ndarray) -> np.ndarray:
    """The file number of each key."""
    return np.asarray(keys, np.int64) >> KEY_FILE_SHIFT


def groups_frame(members: Any, component_keys: np.ndarray, components: np.ndarray, representative: str) -> Any:
    """The output frame (dedup.GROUP_COLUMNS) of members read with read_members, given each
    key's component."""
    import pandas as pd

    from .dedup import describe_groups

    if len(members):
        members = members.assign(component=pd.Series(components, index=component_keys)
                                 .reindex(members["faiss_id"].to_numpy()).to_numpy())
        vectors = np.stack(members["vector"].to_numpy()).astype(np.float32)
        position = pd.Series(np.arange(len(members)), index=members["faiss_id"].to_numpy())

        def vectors_of(keys: np.ndarray) -> np.ndarray:
            return vectors[position.reindex(keys).to_numpy()]
    else:
        def vectors_of(keys: np.ndarray) -> np.ndarray:
            return np.zeros((len(keys), 0), np.float32)
    return describe_groups(members.drop(columns=["vector"], errors="ignore"), vectors_of, representative)


def stats_of(frame: Any, plan: BucketPlan, engine: str, vectors: int, pairs: int, dropped: int,
             seconds: dict[str, float]) -> dict[str, Any]:
    """The run's figures, with the local dedup's keys (frame.attrs["stats"])."""
    return {
        "engine": engine, "vectors": vectors, "vector": plan.vector,
        "kind": "buckets", "buckets": plan.nlist, "probes": plan.probes, "threshold": plan.threshold,
        "pairs": pairs, "pairs_dropped_by_reviews": dropped,
        "groups": int(frame["group"].nunique()) if len(frame) else 0, "images_in_groups": int(len(frame)),
        **{f"seconds_{name}": round(value, 3) for name, value in seconds.items()},
    }
