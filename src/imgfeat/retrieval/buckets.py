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

Binary codes (metric "hamming", `dedup --using code`): a sign code of B bits read as a vector of
+-1 has cosine 1 - 2 h / B with another (h: their Hamming distance), so the same k-means buckets
serve, trained on the +-1 vectors, and the join inside a bucket is an integer dot product of +-1
vectors (exact in float32: |dot| <= B < 2^24): h <= max_hamming <=> dot >= B - 2 max_hamming.
The rows carry the packed codes (B / 8 bytes, not 4 B of floats) through the shuffle.
Small radii use multi-index hashing instead, which is exact: the code is cut into r + 1 parts
(r = max_hamming); a pair at most r bits apart differs in at most r parts, so it agrees on one
whole part, and every code goes to the r + 1 buckets (part number, part value), stored and
probing in each. It is chosen (nlist None) when the parts keep MIH_MIN_PART_BITS bits or more
(r <= 7 of 128 bits, 15 of 256); at the default r = 45 of 256 bits the parts would have 5 bits
(32 values: every bucket ~n/32 codes), or, with fewer parts, 137+ probes each; there the k-means
buckets serve (as IVF: not exact, `probes` trades work for recall).

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

from ..dataset import FeatureDataset, code_matrix, embedding_matrix
from ..errors import ConfigError, SourceError
from ..schema import STATUS_OK
from .id_table import meta_columns
from .reviews import not_duplicate_sets

KEY_FILE_SHIFT = 32  # key = file number << 32 | row in file: sorts like the local labels
JOIN_CHUNK_VALUES = 1 << 24  # probing rows x stored rows scored at a time (64 MiB of float32)
SAMPLE_PER_BUCKET = 64  # training vectors per centroid (faiss warns below 39)
METRICS = ("cosine", "hamming")  # float vectors, binary codes
# codes are bucketed by multi-index hashing when max_hamming + 1 parts keep this many bits each
# (2^16+ values a table: few false candidates), else by k-means on their +-1 vectors
MIH_MIN_PART_BITS = 16
MIH_KEY_BITS = 48  # a bucket id: part number << 48 | the part's first (up to) 48 bits


@dataclass(frozen=True)
class BucketPlan:
    """The picklable recipe every worker gets: where the rows are and how to bucket them.

    Attributes:
        fs: the fsspec filesystem of the files. files: their paths, in dataset order.
        column: the vector (or code) column compared. dim: values in a row: floats of a
            vector, bytes of a packed code.
        centroids: (nlist, dim or bits) float32 unit vectors. probes: buckets each vector probes.
        threshold: cosine at or above which a pair is kept (metric "cosine"; with "hamming"
            the cosine max_hamming was derived from, for the figures). max_neighbors: pairs kept
            per probing vector and bucket (0: all).
        reviewed: id -> numbers of the not-duplicate sets it belongs to.
        vector: "image" or "object" (what the column holds, for the figures).
        rows: rows in the files (all statuses), for sizing the shuffle.
        metric: "cosine" (float vectors) or "hamming" (packed binary codes).
        max_hamming: with "hamming": differing bits at or below which a pair is kept.
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
    metric: str = "cosine"
    max_hamming: int = 0
    mih_parts: int = 0  # > 0: codes bucketed by multi-index hashing into this many parts

    @property
    def nlist(self) -> int:
        """Buckets: centroids, or the (part, value) buckets multi-index hashing can fill."""
        if self.mih_parts:
            return self.mih_parts << min(self.part_bits, 30)
        return len(self.centroids)

    @property
    def part_bits(self) -> int:
        return self.bits // self.mih_parts if self.mih_parts else 0

    @property
    def codes(self) -> bool:
        return self.metric == "hamming"

    @property
    def bits(self) -> int:
        return self.dim * 8 if self.codes else 0

    @property
    def value_dtype(self) -> Any:
        """The dtype of a row's values: float32 for vectors, uint8 for packed codes."""
        return np.uint8 if self.codes else np.float32

    @property
    def row_bytes(self) -> int:
        return self.dim * np.dtype(self.value_dtype).itemsize

    def as_float(self, rows: np.ndarray) -> np.ndarray:
        """Rows as float32 vectors to score: themselves, or a code's bits as +-1."""
        return signs(rows) if self.codes else rows

    @property
    def min_score(self) -> float:
        """The join's cut on as_float(a) . as_float(b): the cosine, or B - 2 max_hamming."""
        return float(self.bits - 2 * self.max_hamming) if self.codes else self.threshold

    def similarity(self, scores: np.ndarray) -> np.ndarray:
        """Join scores as similarities: the cosine, or 1 - h / B for codes (as `search --using code`)."""
        return ((scores + self.bits) / (2 * self.bits)).astype(np.float32) if self.codes else scores


def signs(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, B / 8) uint8 as (n, B) float32 vectors of +-1 (bit 1 -> +1)."""
    return np.unpackbits(np.asarray(codes, np.uint8), axis=1).astype(np.float32) * 2.0 - 1.0


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - h / B of each row pair of two packed code arrays (n, B / 8)."""
    a, b = np.asarray(a, np.uint8), np.asarray(b, np.uint8)
    if not a.size:
        return np.ones(len(a), np.float32)
    differing = np.unpackbits(a ^ b, axis=1).sum(axis=1)
    return (1.0 - differing / (a.shape[1] * 8)).astype(np.float32)


def differing_bits(xor: np.ndarray) -> np.ndarray:
    """Set bits of each row of a uint8 (n, bytes) array (np.bitwise_count from numpy 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(xor).sum(axis=1, dtype=np.int64)
    return np.unpackbits(xor, axis=1).sum(axis=1, dtype=np.int64)


def max_hamming_for(threshold: float, bits: int) -> int:
    """Differing bits matching a cosine threshold, as the evaluator's code threshold: for sign
    codes of random planes the expected fraction of differing bits is angle / pi, so a pair is
    kept when h / bits <= acos(threshold) / pi."""
    return int(math.floor(bits * math.acos(min(1.0, threshold)) / math.pi + 1e-9))


def default_nlist(count: int) -> int:
    """Buckets for `count` vectors: sqrt(n) as the IVF index, enough training points each."""
    nlist = int(min(65536, max(1, round(math.sqrt(max(count, 1))))))
    return max(1, min(nlist, count // 39))


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def training_sample(dataset: FeatureDataset, column: str, size: int, seed: int = 0, codes: bool = False) -> np.ndarray:
    """About `size` unit vectors from whole files picked at random (not one pass over all of them:
    the driver reads only as many files as the sample needs); codes as +-1 / sqrt(bits)."""
    order = np.random.default_rng(seed).permutation(len(dataset.files))
    dim = dataset.code_bytes * 8 if codes else dataset.dim
    parts, held = [], 0
    for number in order:
        vectors = _read_file(dataset.fs, dataset.files[number], column,
                             dataset.code_bytes if codes else dataset.dim, [], codes)[1]
        if codes:
            vectors = signs(vectors) / np.float32(math.sqrt(dim))
        parts.append(vectors)
        held += len(vectors)
        if held >= 2 * size:
            break
    sample = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
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
                 seed: int = 0, vector: str = "image", max_hamming: int | None = None) -> BucketPlan:
    """Train the coarse quantiser on a sample and return the recipe for the workers.

    Args:
        max_hamming: compare the packed codes of `column` by Hamming distance, keeping pairs
            at most this far apart (None: `column` holds float vectors, compared by cosine).
        nlist: buckets (default sqrt(rows)); 0: no quantiser (one process reads the rows).

    Raises:
        ConfigError: probes below 1, a negative max_hamming, or codes that are not there.
        SourceError: no rows with status ok.
    """
    if probes < 1:
        raise ConfigError(f"probes must be at least 1, got {probes}")
    codes = max_hamming is not None
    if codes and not dataset.code_bytes:
        raise ConfigError(f"{dataset.location} holds no binary codes to compare")
    if codes and not 0 <= max_hamming <= dataset.code_bytes * 8:
        raise ConfigError(f"max_hamming must be in 0..{dataset.code_bytes * 8} (the code's bits), got {max_hamming}")
    rows = 0
    for path in dataset.files:  # the footers only
        with dataset.fs.open(path, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    mih_parts = 0
    if codes and nlist is None and dataset.code_bytes * 8 // (max_hamming + 1) >= MIH_MIN_PART_BITS:
        mih_parts, nlist = max_hamming + 1, 0  # exact buckets, nothing to train
    nlist = default_nlist(rows) if nlist is None else nlist
    sample = training_sample(dataset, column, max(nlist, 1) * SAMPLE_PER_BUCKET, seed, codes)
    if not len(sample):
        raise SourceError(f"{dataset.location} has no rows with status ok to group")
    reviewed: dict[str, set[int]] = {}
    for number, ids in enumerate(not_duplicate_sets(reviews)):
        for item in ids:
            reviewed.setdefault(item, set()).add(number)
    centroids = train_centroids(sample, nlist, seed) if nlist else np.zeros((0, sample.shape[1]), np.float32)
    return BucketPlan(dataset.fs, tuple(dataset.files), column, dataset.code_bytes if codes else dataset.dim,
                      centroids, mih_parts or max(1, min(probes, len(centroids))), threshold, max_neighbors,
                      {k: frozenset(v) for k, v in reviewed.items()}, vector, rows,
                      "hamming" if codes else "cosine", int(max_hamming or 0), mih_parts)


# --- in the workers -------------------------------------------------------------------------

def _read_file(fs: Any, path: str, column: str, dim: int, extra: Sequence[str],
               codes: bool = False) -> tuple[np.ndarray, np.ndarray, Any]:
    """(rows in file, unit vectors or packed codes, table of `extra` columns) of the status-ok
    rows of one file."""
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=["status", column, *extra])
    ok = pc.equal(table.column("status"), STATUS_OK).to_numpy(zero_copy_only=False)
    positions = np.flatnonzero(ok)
    table = table.filter(ok)
    if codes:
        values = code_matrix(table.column(column), dim) if table.num_rows else np.zeros((0, dim), np.uint8)
        return positions, values, table
    vectors = embedding_matrix(table.column(column), dim) if table.num_rows else np.zeros((0, dim), np.float32)
    return positions, _normalize(vectors), table


def read_vectors(plan: BucketPlan, number: int) -> dict[str, np.ndarray]:
    """The status-ok rows of file `number`: key, id and unit vector (or packed code) of each."""
    positions, vectors, table = _read_file(plan.fs, plan.files[number], plan.column, plan.dim, ["id"], plan.codes)
    keys = (np.int64(number) << KEY_FILE_SHIFT) | positions.astype(np.int64)
    return {"key": keys, "id": np.asarray(table.column("id").to_pylist(), dtype=object), "vector": vectors}


def read_members(plan: BucketPlan, number: int, keys: np.ndarray) -> Any:
    """Metadata and vectors of the rows of file `number` among `keys`, as a DataFrame with
    faiss_id (the key) and the index's metadata columns, vectors in a `vector` column."""
    import pandas as pd

    columns = ["id", "path", "width", "height", "box", "label", "score", "crop"]
    positions, vectors, table = _read_file(plan.fs, plan.files[number], plan.column, plan.dim, columns, plan.codes)
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
    if plan.mih_parts:  # every part's bucket, stored and probing in each
        count = plan.mih_parts
        repeat = np.repeat(np.arange(len(vectors)), count)
        return {"bucket": part_buckets(plan, vectors).reshape(-1), "stored": np.ones(len(repeat), bool),
                "key": rows["key"][repeat], "id": rows["id"][repeat], "vector": vectors[repeat]}
    scores = plan.as_float(vectors) @ plan.centroids.T
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


def part_buckets(plan: BucketPlan, codes: np.ndarray) -> np.ndarray:
    """(n, parts) bucket ids of packed codes under multi-index hashing: part number << 48 | the
    part's first (up to) 48 bits (two codes agreeing on a whole part share its bucket)."""
    width = min(plan.part_bits, MIH_KEY_BITS)
    bits = np.unpackbits(codes, axis=1)[:, :plan.mih_parts * plan.part_bits]
    bits = bits.reshape(len(codes), plan.mih_parts, plan.part_bits)[:, :, :width].astype(np.int64)
    values = bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))
    return (np.arange(plan.mih_parts, dtype=np.int64) << MIH_KEY_BITS) | values


def join_bucket(plan: BucketPlan, keys: np.ndarray, ids: np.ndarray, vectors: np.ndarray,
                stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The pairs of one bucket: (lo keys, hi keys, similarities, pairs dropped by reviews), each
    pair once, cosine >= threshold (or Hamming distance <= max_hamming), self pairs and
    reviewed pairs out."""
    base = np.flatnonzero(stored)
    found_lo, found_hi, found_scores = [], [], []
    if len(base):
        base_vectors = np.ascontiguousarray(plan.as_float(vectors[base]))
        step = max(1, JOIN_CHUNK_VALUES // len(base))
        for start in range(0, len(keys), step):
            scores = plan.as_float(vectors[start:start + step]) @ base_vectors.T
            rows, cols = np.nonzero(scores >= plan.min_score)
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
            found_scores.append(plan.similarity(values).astype(np.float32))
    if not found_lo:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    lo, hi, scores = np.concatenate(found_lo), np.concatenate(found_hi), np.concatenate(found_scores)
    _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    lo, hi, scores = lo[first], hi[first], scores[first]
    reviewed = reviewed_pairs(plan, lo, hi, keys, ids)
    return lo[~reviewed], hi[~reviewed], scores[~reviewed], int(reviewed.sum())


def reviewed_pairs(plan: BucketPlan, lo: np.ndarray, hi: np.ndarray, keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which pairs (lo, hi) of keys sit inside one not-duplicate review (ids: the id of each key)."""
    if not plan.reviewed or not len(lo):
        return np.zeros(len(lo), bool)
    # only the few keys in a review are looked up by id (the join may hold millions of pairs)
    watched = np.array([i in plan.reviewed for i in np.asarray(ids).tolist()], dtype=bool)
    watched_keys = np.asarray(keys, np.int64)[watched]
    id_of = dict(zip(watched_keys.tolist(), np.asarray(ids)[watched].tolist()))
    candidates = np.flatnonzero(np.isin(lo, watched_keys) & np.isin(hi, watched_keys))
    reviewed = np.zeros(len(lo), bool)
    for at in candidates.tolist():
        reviewed[at] = bool(plan.reviewed[id_of[int(lo[at])]] & plan.reviewed[id_of[int(hi[at])]])
    return reviewed


def join_buckets(plan: BucketPlan, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The pairs (lo, hi) of every bucket among `rows` (bucket_rows of any files, one partition
    of the shuffle), how many reviews dropped, and how many vectors are stored there."""
    order = np.argsort(rows["bucket"], kind="stable")
    rows = {name: values[order] for name, values in rows.items()}
    _, starts = np.unique(rows["bucket"], return_index=True)
    bounds = np.append(starts, len(rows["bucket"])).astype(np.int64)
    found_lo, found_hi, dropped = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    if plan.mih_parts:
        # millions of buckets, nearly all of one or a few codes: those are joined at once
        sizes = np.diff(bounds)
        small = (sizes >= 2) & (sizes <= SMALL_BUCKET) & ((sizes - 1 <= plan.max_neighbors) | (plan.max_neighbors == 0))
        lo, hi, reviewed = _join_small_buckets(plan, rows, bounds[:-1][small], sizes[small])
        found_lo.append(lo)
        found_hi.append(hi)
        dropped += reviewed
        large = np.flatnonzero(sizes > SMALL_BUCKET) if plan.max_neighbors == 0 else np.flatnonzero(
            (sizes > SMALL_BUCKET) | ((sizes >= 2) & (sizes - 1 > plan.max_neighbors)))
        spans = zip(bounds[large], bounds[large + 1])
        stored = int(np.count_nonzero((rows["bucket"] >> MIH_KEY_BITS) == 0))  # each code once: part 0
    else:
        spans = zip(bounds[:-1], bounds[1:])
        stored = int(np.count_nonzero(rows["stored"]))
    for start, stop in spans:
        lo, hi, _, reviewed = join_bucket(plan, rows["key"][start:stop], rows["id"][start:stop],
                                          rows["vector"][start:stop], rows["stored"][start:stop])
        found_lo.append(lo)
        found_hi.append(hi)
        dropped += reviewed
    return np.concatenate(found_lo), np.concatenate(found_hi), dropped, stored


SMALL_BUCKET = 32  # multi-index-hashing buckets up to this size are joined together, vectorised


def _join_small_buckets(plan: BucketPlan, rows: dict[str, np.ndarray], starts: np.ndarray,
                        sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """All pairs inside many small buckets (rows sorted by bucket; every row stored), by the
    Hamming distance of their packed codes: (lo keys, hi keys, pairs dropped by reviews)."""
    first, second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for size in np.unique(sizes).tolist():
        at = starts[sizes == size]
        a, b = np.triu_indices(size, k=1)
        first.append((at[:, None] + a[None, :]).reshape(-1))
        second.append((at[:, None] + b[None, :]).reshape(-1))
    first, second = np.concatenate(first), np.concatenate(second)
    codes = rows["vector"]
    distance = np.zeros(len(first), np.int64)
    for start in range(0, len(first), 1 << 20):  # a million pairs' XOR at a time
        part = slice(start, start + (1 << 20))
        distance[part] = differing_bits(codes[first[part]] ^ codes[second[part]])
    keep = distance <= plan.max_hamming
    one, two = rows["key"][first[keep]], rows["key"][second[keep]]
    lo, hi = np.minimum(one, two), np.maximum(one, two)
    if len(lo):
        pairs = np.unique(np.stack([lo, hi], axis=1), axis=0)
        lo, hi = pairs[:, 0], pairs[:, 1]
    reviewed = reviewed_pairs(plan, lo, hi, rows["key"], rows["id"])
    return lo[~reviewed], hi[~reviewed], int(reviewed.sum())


def components_of_pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, component) of every key in a pair: the component is the smallest key of its
    group (the local label propagation, on the driver: 16 bytes a pair)."""
    from .groups import _components

    keys, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    component = _components(len(keys), inverse[:len(lo)], inverse[len(lo):])
    smallest = np.full(len(keys), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, component, keys)
    return keys, smallest[component]


# --- on the driver, around the engine -------------------------------------------------------

def prepare(source: Any, threshold: float, representative: str, reviews: Any, vector: str, *,
            nlist: int | None, probes: int, max_neighbors: int, seed: int, using: str = "embedding",
            max_hamming: int | None = None) -> tuple[FeatureDataset, BucketPlan]:
    """Check the arguments as the local dedup does, open the features, pick the vector (or code)
    column (the whole image's by default, as the local dedup) and plan the buckets.

    Args:
        using: "embedding" (cosine >= threshold) or "code" (Hamming distance <= max_hamming;
            None: max_hamming_for(threshold, bits), the evaluator's matching threshold).
    """
    from ..dataset import open_features
    from .groups import USING, check_arguments, resolve_vector, review_records
    from ..dataset import VECTORS, vector_columns

    check_arguments(threshold, representative)
    if vector not in VECTORS + ("auto",):
        raise ConfigError(f"vector must be one of {', '.join(VECTORS)} or auto, got {vector!r}")
    if using not in USING:
        raise ConfigError(f"using must be one of {', '.join(USING)}, got {using!r}")
    if max_hamming is not None and using != "code":
        raise ConfigError("max_hamming is for using='code' (binary codes); embeddings use the threshold")
    dataset = open_features(source)
    vector = resolve_vector([dataset], vector)
    columns = vector_columns(dataset, "whole-image" if vector == "image" else "object")
    if using == "code" and max_hamming is None:
        max_hamming = max_hamming_for(threshold, dataset.code_bytes * 8)
    plan = plan_buckets(dataset, columns[1] if using == "code" else columns[0], threshold, nlist=nlist,
                        probes=probes, max_neighbors=max_neighbors, reviews=review_records(reviews), seed=seed,
                        vector=vector, max_hamming=max_hamming)
    return dataset, plan


def file_numbers(keys: np.ndarray) -> np.ndarray:
    """The file number of each key."""
    return np.asarray(keys, np.int64) >> KEY_FILE_SHIFT


def groups_frame(members: Any, component_keys: np.ndarray, components: np.ndarray, representative: str,
                 codes: bool = False) -> Any:
    """The output frame (dedup.GROUP_COLUMNS) of members read with read_members, given each
    key's component (codes: the members' `vector` holds packed codes; scores are 1 - h / bits)."""
    import pandas as pd

    from .groups import describe_groups

    if len(members):
        members = members.assign(component=pd.Series(components, index=component_keys)
                                 .reindex(members["faiss_id"].to_numpy()).to_numpy())
        vectors = np.stack(members["vector"].to_numpy())
        position = pd.Series(np.arange(len(members)), index=members["faiss_id"].to_numpy())

        def vectors_of(keys: np.ndarray) -> np.ndarray:
            return vectors[position.reindex(keys).to_numpy()]
    else:
        def vectors_of(keys: np.ndarray) -> np.ndarray:
            return np.zeros((len(keys), 0), np.float32)
    return describe_groups(members.drop(columns=["vector"], errors="ignore"), vectors_of, representative,
                           hamming_similarity if codes else None)


def stats_of(frame: Any, plan: BucketPlan, engine: str, vectors: int, pairs: int, dropped: int,
             seconds: dict[str, float]) -> dict[str, Any]:
    """The run's figures, with the local dedup's keys (frame.attrs["stats"])."""
    return {
        "engine": engine, "vectors": vectors, "vector": plan.vector,
        "kind": "mih-buckets" if plan.mih_parts else "buckets", "buckets": plan.nlist, "probes": plan.probes,
        "threshold": plan.threshold,
        **using_stats(plan), "pairs": pairs, "pairs_dropped_by_reviews": dropped,
        "groups": int(frame["group"].nunique()) if len(frame) else 0, "images_in_groups": int(len(frame)),
        **{f"seconds_{name}": round(value, 3) for name, value in seconds.items()},
    }


def using_stats(plan: BucketPlan) -> dict[str, Any]:
    """What was compared, for the figures: {"using": "embedding"} or the code's bits and radius."""
    if plan.codes:
        return {"using": "code", "bits": plan.bits, "max_hamming": plan.max_hamming}
    return {"using": "embedding"}
