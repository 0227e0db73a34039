"""Near-duplicate groups on Spark: the local `dedup`'s groups, join and components on executors.

    groups = find_duplicates_spark("features/", threshold=0.85)   # a DataFrame, as find_duplicates

How (buckets.py holds the steps): the driver trains the coarse quantiser on a sample and
broadcasts it; a DataFrame of file numbers is mapped (mapInArrow, one file per task) to one row
per (bucket, vector) with the vector as float32 bytes; `groupBy("bucket").applyInArrow` joins
each bucket exactly. The pairs' connected components come from an iterative min-label
propagation with pointer jumping over DataFrames (a few rounds for near-duplicate groups, whose
diameter is small; checkpointed each round), or, while the pairs fit (components="auto", up to
DRIVER_PAIRS_LIMIT), from scipy on the driver as in the local dedup: each Spark round costs
seconds of job overhead, 20M pairs collected cost ~0.3 GiB. Then only the component of each group
member reaches the driver, and the members' metadata and vectors (the output frame itself).
With using="code" the rows carry packed binary codes compared by Hamming distance (buckets.py).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, MissingExtra
from .buckets import (BucketPlan, bucket_rows, components_of_pairs, file_numbers, groups_frame, join_buckets,
                      prepare, read_members, read_vectors, stats_of)
from .dedup import DEFAULT_THRESHOLD

ROWS_SCHEMA = "bucket long, stored boolean, key long, id string, vector binary"
PAIRS_SCHEMA = "lo long, hi long, dropped long, stored long"  # plus one tally row per bucket (lo = -1)
MEMBERS_SCHEMA = ("faiss_id long, id string, path string, width long, height long, x1 double, y1 double, "
                  "x2 double, y2 double, label string, score double, crop string, vector binary")
MAX_ROUNDS = 64
PARTITION_BYTES = 128 << 20  # shuffled rows joined by one task at most (about)
BATCH_ROWS = 8192  # rows per Arrow batch out of the bucketing (binary offsets are int32)
# components="auto" collects the pairs to the driver (16 bytes each, with scipy's components as the
# local dedup) up to this many, and propagates labels on the executors above it
DRIVER_PAIRS_LIMIT = 20_000_000
COMPONENTS = ("auto", "driver", "spark")


def _vector_column(vectors: np.ndarray) -> Any:
    """Rows (float32 vectors or uint8 packed codes) as an Arrow binary column, without a Python
    object per row."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors)
    width = vectors.shape[1] * vectors.itemsize
    offsets = np.arange(len(vectors) + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), len(vectors), [None, pa.py_buffer(offsets), pa.py_buffer(vectors)])


def _vectors_of(column: Any, dim: int, dtype: Any = np.float32) -> np.ndarray:
    """The (n, dim) rows of `dtype` of a binary column written by _vector_column."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if not len(array):
        return np.zeros((0, dim), dtype)
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:array.offset + len(array) + 1]
    values = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    return values.view(dtype).reshape(len(array), dim)


def _bucket_files(plan: BucketPlan, batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow: file numbers -> one row per (bucket, vector), in batches of at most BATCH_ROWS."""
    import pyarrow as pa

    for batch in batches:
        for number in batch.column("file").to_pylist():
            rows = bucket_rows(plan, read_vectors(plan, int(number)))
            for start in range(0, len(rows["key"]), BATCH_ROWS):
                part = {name: values[start:start + BATCH_ROWS] for name, values in rows.items()}
                yield pa.RecordBatch.from_arrays(
                    [pa.array(part["bucket"]), pa.array(part["stored"]), pa.array(part["key"]),
                     pa.array(part["id"], pa.string()), _vector_column(part["vector"])],
                    names=["bucket", "stored", "key", "id", "vector"])


def _join_partition(plan: BucketPlan, batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow over one partition of the shuffle by bucket: its pairs and one tally row (lo = -1)."""
    import pyarrow as pa

    batches = [batch for batch in batches if batch.num_rows]
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    lo, hi, dropped, stored = join_buckets(plan, {
        "bucket": table.column("bucket").to_numpy(), "key": table.column("key").to_numpy(),
        "stored": table.column("stored").to_numpy(zero_copy_only=False),
        "id": np.asarray(table.column("id").to_pylist(), dtype=object),
        "vector": _vectors_of(table.column("vector"), plan.dim, plan.value_dtype)})
    zeros = np.zeros(len(lo), np.int64)
    yield pa.RecordBatch.from_pydict({"lo": np.append(lo, -1), "hi": np.append(hi, -1),
                                      "dropped": np.append(zeros, dropped), "stored": np.append(zeros, stored)})


def _read_members(plan: BucketPlan, member_keys: Any, frames: Iterator[Any]) -> Iterator[Any]:
    """mapInPandas: file numbers -> metadata and vectors (bytes) of the group members in them."""
    keys = member_keys.value
    for frame in frames:
        for number in frame["file"].tolist():
            members = read_members(plan, int(number), keys[file_numbers(keys) == number]).reset_index()
            members["vector"] = [np.ascontiguousarray(v, plan.value_dtype).tobytes() for v in members["vector"]]
            yield members.astype({"width": "Int64", "height": "Int64"})  # error-free rows: never null


def label_components(pairs: Any, max_rounds: int = MAX_ROUNDS) -> Any:
    """(node, component) of every node of an edge DataFrame (lo, hi): the smallest node of its
    connected component, by min-label propagation with pointer jumping.

    Raises:
        RuntimeError: no fixed point after `max_rounds` rounds (a chain longer than 2^64...:
            cannot happen with pointer jumping, but a loop must end).
    """
    from pyspark.sql import functions as F

    edges = pairs.select(F.col("lo").alias("src"), F.col("hi").alias("dst")).union(
        pairs.select(F.col("hi").alias("src"), F.col("lo").alias("dst"))).localCheckpoint()
    labels = edges.groupBy("src").agg(F.min("dst").alias("low")).select(
        F.col("src").alias("node"), F.least("src", "low").alias("label")).localCheckpoint()
    for _ in range(max_rounds):
        neighbour = (edges.join(labels.withColumnRenamed("node", "dst"), "dst")
                     .groupBy("src").agg(F.min("label").alias("low")).withColumnRenamed("src", "node"))
        lowered = labels.join(neighbour, "node").select("node", F.col("label").alias("before"),
                                                        F.least("label", "low").alias("label"))
        parent = lowered.select(F.col("node").alias("label"), F.col("label").alias("jump"))
        labels = lowered.join(parent, "label").select("node", "before", F.col("jump").alias("label")).localCheckpoint()
        if not labels.where(F.col("label") != F.col("before")).limit(1).count():
            return labels.select("node", F.col("label").alias("component"))
        labels = labels.drop("before")
    raise RuntimeError(f"connected components did not settle in {max_rounds} rounds")


def find_duplicates_spark(source: Any, threshold: float = DEFAULT_THRESHOLD, *, representative: str = "largest",
                          reviews: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
                          vector: str = "auto", nlist: int | None = None, probes: int = 8,
                          max_neighbors: int = 100, seed: int = 0, components: str = "auto",
                          master: str | None = None, using: str = "embedding", max_hamming: int | None = None) -> Any:
    """Group near-duplicate images on Spark: the groups of `find_duplicates`, in the same frame.

    Args:
        source: a feature folder (local, or a URL every executor can read), a file or a list of them.
        threshold, representative, reviews, vector, max_neighbors, using, max_hamming: as
            `find_duplicates` (max_neighbors counts per bucket a vector probes; with using="code"
            the buckets are trained on the codes' bits as +-1 vectors, buckets.py).
        nlist: buckets (default sqrt(rows), as the local IVF index). probes: buckets each
            vector is compared in (default 8, the local dedup's nprobe).
        seed: seed of the training sample and k-means.
        components: where the pairs' connected components are found: "spark" (label
            propagation on the executors), "driver" (pairs collected, as the local dedup), or
            "auto" (default): the driver up to DRIVER_PAIRS_LIMIT pairs, else Spark.
        master: the Spark master when no session is running (default $MASTER, else local[*]).

    Returns:
        pandas.DataFrame with dedup.GROUP_COLUMNS; `frame.attrs["stats"]` holds counts and seconds.

    Raises:
        MissingExtra: pyspark is not installed. ConfigError: as `find_duplicates`, or an unknown
            `components`. SourceError: as `find_duplicates`.
    """
    if components not in COMPONENTS:
        raise ConfigError(f"components must be one of {', '.join(COMPONENTS)}, got {components!r}")
    try:
        from pyspark.sql import functions as F
    except ImportError as exc:
        raise MissingExtra("pyspark", extra="spark", purpose="dedup --engine spark") from exc
    from ..runners.spark import spark_session

    started = time.perf_counter()
    _, plan = prepare(source, threshold, representative, reviews, vector, nlist=nlist, probes=probes,
                      using=using, max_hamming=max_hamming,
                      max_neighbors=max_neighbors, seed=seed)
    spark, created = spark_session(master)
    try:
        trained = time.perf_counter()
        files = spark.createDataFrame([(n,) for n in range(len(plan.files))], "file long").repartition(
            len(plan.files))
        rows = files.mapInArrow(lambda batches: _bucket_files(plan, batches), ROWS_SCHEMA)
        # a hash shuffle by bucket, each partition joined in one Python call: no sort by bucket in
        # the JVM (groupBy + applyInArrow sorted and spilled 0.9 GB of rows in local mode)
        partitions = max(2 * spark.sparkContext.defaultParallelism,
                         math.ceil(plan.rows * plan.probes * (plan.row_bytes + 48) / PARTITION_BYTES))
        found = (rows.repartition(partitions, "bucket")
                 .mapInArrow(lambda batches: _join_partition(plan, batches), PAIRS_SCHEMA).localCheckpoint())
        tally = found.where("lo < 0").agg(F.sum("dropped"), F.sum("stored")).first()
        dropped, vectors = int(tally[0] or 0), int(tally[1] or 0)
        pairs = found.where("lo >= 0").select("lo", "hi").dropDuplicates().localCheckpoint()
        pair_count = pairs.count()
        joined = time.perf_counter()

        if components == "spark" or (components == "auto" and pair_count > DRIVER_PAIRS_LIMIT):
            labels = label_components(pairs).toPandas()
            keys, component = labels["node"].to_numpy(np.int64), labels["component"].to_numpy(np.int64)
        else:
            collected = pairs.toPandas()
            keys, component = components_of_pairs(collected["lo"].to_numpy(np.int64),
                                                  collected["hi"].to_numpy(np.int64))
        member_keys = spark.sparkContext.broadcast(keys)
        wanted = spark.createDataFrame([(int(n),) for n in np.unique(file_numbers(keys))], "file long")
        members = (wanted.repartition(max(1, wanted.count()))
                   .mapInPandas(lambda frames: _read_members(plan, member_keys, frames), MEMBERS_SCHEMA)
                   .toPandas() if len(keys) else None)
        member_keys.unpersist()
    finally:
        if created:
            spark.stop()
    if members is None:
        members = read_members(plan, 0, np.zeros(0, np.int64))
    else:
        members = members.set_index("id")
        members["vector"] = [np.frombuffer(v, plan.value_dtype) for v in members["vector"]]
    frame = groups_frame(members, keys, component, representative, plan.codes)
    frame.attrs["stats"] = stats_of(frame, plan, "spark", int(vectors), int(pair_count), dropped, {
        "train": trained - started, "join": joined - trained, "groups": time.perf_counter() - joined,
        "total": time.perf_counter() - started})
    return frame
