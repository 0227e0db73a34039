"""Distributed dedup (Spark, Ray) against the local reference: the same groups, reviews respected.

A synthetic feature set: 3,000 rows in 10 files (plus error rows): unrelated unit vectors and
planted clusters of 2-6 noisy copies, some of them chains (a~b, b~c, a and c below the
threshold: only components join them). The bucketed join runs with many buckets and few probes
so that pairs do cross buckets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")

from imgfeat.cli import main  # noqa: E402
from imgfeat.retrieval.buckets import bucket_rows, join_bucket, plan_buckets, read_vectors  # noqa: E402
from imgfeat.dataset import open_features  # noqa: E402
from imgfeat.retrieval.dedup import find_duplicates  # noqa: E402
from imgfeat.retrieval.reviews import save_review  # noqa: E402

from test_index import write_features  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

THRESHOLD = 0.9
DIM = 48


def planted(n: int = 3000, seed: int = 3) -> np.ndarray:
    """Unrelated unit vectors, then clusters of copies (each a noisy copy of the previous
    member: chains) overwriting random rows."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = rng.permutation(n)[:900]
    at = 0
    while at < len(rows) - 6:
        size = int(rng.integers(2, 7))
        members = rows[at:at + size]
        for previous, row in zip(members[:-1], members[1:]):
            copy = vectors[previous] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
            vectors[row] = copy / np.linalg.norm(copy)
        at += size
    return vectors


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    vectors = planted()
    ids = [f"img{i:05d}" for i in range(len(vectors))]
    return write_features(tmp_path_factory.mktemp("ddedup") / "features", vectors, ids, shard_size=301, errors=9)


@pytest.fixture(scope="module")
def local(features) -> pd.DataFrame:
    return find_duplicates(features, THRESHOLD)


def _groups(frame: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(members["id"]) for _, members in frame.groupby("group")}


def _same_frame(distributed: pd.DataFrame, local: pd.DataFrame) -> None:
    assert _groups(distributed) == _groups(local)
    pd.testing.assert_frame_equal(distributed.drop(columns=["score"]), local.drop(columns=["score"]))
    np.testing.assert_allclose(distributed["score"], local["score"], atol=1e-5)


def test_the_planted_set_has_chains_and_many_groups(local, features):
    assert local["group"].nunique() > 100
    vectors = np.stack(open_features(features).to_pandas(["id", "embedding"], status="ok")
                       .set_index("id").loc[local["id"], "embedding"].to_numpy()).astype(np.float32)
    sims = vectors @ vectors.T
    same = local["group"].to_numpy()[:, None] == local["group"].to_numpy()[None, :]
    assert (same & (sims < THRESHOLD)).any()  # members joined only through others


def test_bucket_join_finds_every_pair_when_the_buckets_cover_everything(features, local):
    dataset = open_features(features)
    plan = plan_buckets(dataset, "embedding", THRESHOLD, nlist=4, probes=4, max_neighbors=0)
    rows = [bucket_rows(plan, read_vectors(plan, number)) for number in range(len(plan.files))]
    merged = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    assert merged["stored"].sum() == 3000 and len(merged["key"]) == 4 * 3000
    pairs = set()
    for bucket in range(4):
        here = merged["bucket"] == bucket
        lo, hi, scores, _ = join_bucket(plan, merged["key"][here], merged["id"][here], merged["vector"][here],
                                        merged["stored"][here])
        assert (lo < hi).all() and (scores >= THRESHOLD).all()
        pairs |= set(zip(lo.tolist(), hi.tolist()))
    vectors = np.concatenate([read_vectors(plan, n)["vector"] for n in range(len(plan.files))])
    keys = np.concatenate([read_vectors(plan, n)["key"] for n in range(len(plan.files))])
    a, b = np.nonzero(np.triu(vectors @ vectors.T >= THRESHOLD, k=1))
    assert pairs == set(zip(keys[a].tolist(), keys[b].tolist()))


@pytest.mark.ray
def test_ray_gives_the_local_groups_and_respects_reviews(features, local, ray_local, tmp_path):
    from imgfeat.retrieval.dedup_ray import find_duplicates_ray

    groups = find_duplicates_ray(features, THRESHOLD, nlist=60, probes=3, partitions=3)
    _same_frame(groups, local)
    stats = groups.attrs["stats"]
    assert stats["engine"] == "ray" and stats["vectors"] == 3000 and stats["buckets"] == 60

    big = local[local["size"] >= 3]["id"].iloc[:2].tolist()
    reviews = tmp_path / "reviews.jsonl"
    save_review(reviews, big)
    reviewed_local = find_duplicates(features, THRESHOLD, reviews=reviews, representative="first")
    reviewed = find_duplicates_ray(features, THRESHOLD, reviews=reviews, representative="first", nlist=60,
                                   probes=3, partitions=2)
    assert reviewed.attrs["stats"]["pairs_dropped_by_reviews"] >= 1
    assert _groups(reviewed) != _groups(local)
    _same_frame(reviewed, reviewed_local)

    none = find_duplicates_ray(features, 0.99999, nlist=60, probes=3)
    assert none.empty and list(none.columns) == list(find_duplicates(features, 0.99999).columns)

    out = tmp_path / "cli" / "groups.parquet"
    assert main(["dedup", str(features), "-o", str(out), "--engine", "ray", "--threshold", str(THRESHOLD),
                 "--buckets", "60", "--probes", "3", "--reviews", str(tmp_path / "none.jsonl")]) == 0
    _same_frame(pd.read_parquet(out), local)


def test_engine_options_are_checked(features, tmp_path, capsys):
    out = str(tmp_path / "groups.parquet")
    assert main(["dedup", str(features), "-o", out, "--buckets", "8"]) != 0
    assert "--buckets and --probes are for --engine spark or ray" in capsys.readouterr().err
    assert main(["dedup", str(features), "-o", out, "--engine", "ray", "--kind", "hnsw"]) != 0
    assert "--kind is for the local engine" in capsys.readouterr().err


@pytest.mark.spark
def test_spark_gives_the_local_groups_and_respects_reviews(features, local, spark_session, tmp_path):
    """One run (Spark jobs cost seconds each here): reviews on, components by label propagation
    on the executors (the driver's components are Ray's, tested above)."""
    from imgfeat.retrieval.dedup_spark import find_duplicates_spark

    big = local[local["size"] >= 3]["id"].iloc[:2].tolist()
    reviews = tmp_path / "reviews.jsonl"
    save_review(reviews, big)
    reviewed_local = find_duplicates(features, THRESHOLD, reviews=reviews)
    assert _groups(reviewed_local) != _groups(local)
    reviewed = find_duplicates_spark(features, THRESHOLD, reviews=reviews, nlist=60, probes=3, components="spark")
    _same_frame(reviewed, reviewed_local)
    stats = reviewed.attrs["stats"]
    assert stats["engine"] == "spark" and stats["vectors"] == 3000 and stats["pairs_dropped_by_reviews"] >= 1
