"""Near-duplicate groups on Ray: the local `dedup`'s groups, the similarity join spread over tasks.

    groups = find_duplicates_ray("features/", threshold=0.85)    # a DataFrame, as find_duplicates

How (buckets.py holds the steps): the driver trains the coarse quantiser on a sample; one task
per feature file reads its status-ok vectors, assigns each to its `probes` nearest buckets and
splits the rows into `partitions` parts by bucket (a task shuffle through the object store);
one task per part joins each bucket's vectors exactly and returns its pairs. The pairs come back
to the driver (16 bytes each, plus the unique pass: 100M pairs ~ 3 GiB of driver memory is the
limit of this design) and their connected components are found there as in the local dedup;
one task per file holding group members reads their metadata and vectors for the output.
With using="code" the rows are packed binary codes compared by Hamming distance (buckets.py).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from ..errors import MissingExtra
from .buckets import (BucketPlan, bucket_rows, components_of_pairs, file_numbers, groups_frame, join_buckets,
                      prepare, read_members, read_vectors, stats_of)
from .dedup import DEFAULT_THRESHOLD


def _bucket_file(plan: BucketPlan, number: int, partitions: int) -> list[dict[str, np.ndarray]]:
    """One file's rows, bucketed, split into `partitions` parts by bucket."""
    rows = bucket_rows(plan, read_vectors(plan, number))
    part = rows["bucket"] % partitions
    return [{name: values[part == p] for name, values in rows.items()} for p in range(partitions)]


def _join_part(plan: BucketPlan, *parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    return join_buckets(plan, {name: np.concatenate([p[name] for p in parts]) for name in parts[0]})


def find_duplicates_ray(source: Any, threshold: float = DEFAULT_THRESHOLD, *, representative: str = "largest",
                        reviews: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
                        vector: str = "auto", nlist: int | None = None, probes: int = 8,
                        max_neighbors: int = 100, partitions: int | None = None, seed: int = 0,
                        address: str | None = None, using: str = "embedding", max_hamming: int | None = None) -> Any:
    """Group near-duplicate images on Ray: the groups of `find_duplicates`, in the same frame.

    Args:
        source: a feature folder (local, or a URL every worker can read), a file or a list of them.
        threshold, representative, reviews, vector, max_neighbors, using, max_hamming: as
            `find_duplicates` (max_neighbors counts per bucket a vector probes; with using="code"
            the buckets are trained on the codes' bits as +-1 vectors, buckets.py).
        nlist: buckets (default sqrt(rows), as the local IVF index). probes: buckets each
            vector is compared in (default 8, the local dedup's nprobe).
        partitions: join tasks (default: twice the cluster's CPUs, at most nlist).
        seed: seed of the training sample and k-means.
        address: the Ray cluster (default $RAY_ADDRESS, else a local instance) when Ray is not
            connected yet.

    Returns:
        pandas.DataFrame with dedup.GROUP_COLUMNS; `frame.attrs["stats"]` holds counts and seconds.

    Raises:
        MissingExtra: ray is not installed. ConfigError / SourceError: as `find_duplicates`.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra("ray", extra="ray", purpose="dedup --engine ray") from exc
    from ..runners.ray_engine import ray_connect

    started = time.perf_counter()
    _, plan = prepare(source, threshold, representative, reviews, vector, nlist=nlist, probes=probes,
                      using=using, max_hamming=max_hamming,
                            max_neighbors=max_neighbors, seed=seed)
    ray_connect(address)
    trained = time.perf_counter()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    partitions = max(1, min(partitions or 2 * cpus, plan.nlist))
    plan_ref = ray.put(plan)
    bucket_task = ray.remote(_bucket_file).options(num_returns=partitions)
    parts = [bucket_task.remote(plan_ref, number, partitions) for number in range(len(plan.files))]
    parts = [p if partitions > 1 else [p] for p in parts]
    joins = [ray.remote(_join_part).remote(plan_ref, *[file_parts[p] for file_parts in parts])
             for p in range(partitions)]
    results = ray.get(joins)
    del parts
    lo = np.concatenate([r[0] for r in results])
    hi = np.concatenate([r[1] for r in results])
    dropped = sum(r[2] for r in results)
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0) if len(lo) else np.zeros((0, 2), np.int64)
    joined = time.perf_counter()

    keys, components = components_of_pairs(pairs[:, 0], pairs[:, 1])
    files = file_numbers(keys)
    member_task = ray.remote(read_members)
    pieces = ray.get([member_task.remote(plan_ref, int(number), keys[files == number])
                      for number in np.unique(files)])
    import pandas as pd

    members = pd.concat(pieces) if pieces else read_members(plan, 0, np.zeros(0, np.int64))
    frame = groups_frame(members, keys, components, representative, plan.codes)
    vectors = sum(r[3] for r in results)
    frame.attrs["stats"] = stats_of(frame, plan, "ray", vectors, len(pairs), dropped, {
        "train": trained - started, "join": joined - trained, "groups": time.perf_counter() - joined,
        "total": time.perf_counter() - started})
    return frame
