"""Near-duplicate groups of binary codes (`dedup --using code`): exact Hamming grouping locally,
and the same groups on Spark and Ray.

A synthetic feature set: 3,000 rows of 64-bit codes in 10 files (plus error rows): unrelated
random codes and planted clusters of 2-6 copies, each 1-4 bits away from the previous member
(chains: a~b and b~c while a and c are further apart than MAX_HAMMING; only components join
them). The vectors are written so that their signs are the codes (test_index.write_features
packs the signs of the first 64 dimensions).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")

from imgfeat.cli import main  # noqa: E402
from imgfeat.dataset import open_features  # noqa: E402
from imgfeat.errors import ConfigError  # noqa: E402
from imgfeat.retrieval.buckets import (bucket_rows, hamming_similarity, join_bucket, max_hamming_for,  # noqa: E402
                                       plan_buckets, read_vectors)
from imgfeat.retrieval.dedup import _components, find_duplicates  # noqa: E402
from imgfeat.retrieval.reviews import save_review  # noqa: E402

from test_index import write_features  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

BITS = 64
MAX_HAMMING = 4
N = 3000


def planted_bits(n: int = N, seed: int = 5) -> np.ndarray:
    """(n, BITS) 0/1: random rows, then chains of copies (1-4 bits flipped from the previous
    member) overwriting random rows."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, BITS)).astype(np.uint8)
    rows = rng.permutation(n)[:900]
    at = 0
    while at < len(rows) - 6:
        members = rows[at:at + int(rng.integers(2, 7))]
        for previous, row in zip(members[:-1], members[1:]):
            bits[row] = bits[previous]
            flip = rng.choice(BITS, int(rng.integers(1, MAX_HAMMING + 1)), replace=False)
            bits[row, flip] ^= 1
        at += len(members)
    return bits


@pytest.fixture(scope="module")
def bits() -> np.ndarray:
    return planted_bits()


@pytest.fixture(scope="module")
def features(tmp_path_factory, bits) -> Path:
    magnitudes = np.random.default_rng(1).uniform(0.1, 1.0, bits.shape).astype(np.float32)
    vectors = np.where(bits == 1, magnitudes, -magnitudes)
    ids = [f"img{i:05d}" for i in range(len(vectors))]
    return write_features(tmp_path_factory.mktemp("cdedup") / "features", vectors, ids, shard_size=301, errors=9)


@pytest.fixture(scope="module")
def local(features) -> pd.DataFrame:
    return find_duplicates(features, using="code", max_hamming=MAX_HAMMING)


def _groups(frame: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(members["id"]) for _, members in frame.groupby("group")}


def brute_force_groups(bits: np.ndarray, radius: int) -> set[frozenset[str]]:
    """Every pair within `radius` bits (all pairs compared), joined into components."""
    signs = bits.astype(np.int32) * 2 - 1
    distance = (BITS - signs @ signs.T) // 2
    lo, hi = np.nonzero(np.triu(distance <= radius, k=1))
    component = _components(len(bits), lo, hi)
    sizes = np.bincount(component)
    groups: dict[int, set[str]] = {}
    for row in np.flatnonzero(sizes[component] >= 2):
        groups.setdefault(int(component[row]), set()).add(f"img{row:05d}")
    return {frozenset(members) for members in groups.values()}


def _same_frame(distributed: pd.DataFrame, local: pd.DataFrame) -> None:
    assert _groups(distributed) == _groups(local)
    pd.testing.assert_frame_equal(distributed, local)


def test_local_code_groups_are_the_exact_hamming_components(features, bits, local):
    expected = brute_force_groups(bits, MAX_HAMMING)
    assert len(expected) > 100
    assert _groups(local) == expected
    stats = local.attrs["stats"]
    assert (stats["using"], stats["bits"], stats["max_hamming"], stats["kind"]) == ("code", BITS, MAX_HAMMING, "flat")
    assert stats["vectors"] == N and stats["groups"] == len(expected)
    # chains: some members are further apart than the radius, joined through others
    codes = np.packbits(bits, axis=1)
    rows = local["id"].str[3:].astype(int).to_numpy()
    distance = np.unpackbits(codes[rows][:, None, :] ^ codes[rows][None, :, :], axis=2).sum(axis=2)
    same = local["group"].to_numpy()[:, None] == local["group"].to_numpy()[None, :]
    assert (same & (distance > MAX_HAMMING)).any()
    # scores: 1 - h / bits to the representative (1 for the representative itself)
    reps = local[local["is_representative"]].set_index("group")["id"]
    rep_rows = reps.loc[local["group"]].str[3:].astype(int).to_numpy()
    np.testing.assert_allclose(local["score"], hamming_similarity(codes[rows], codes[rep_rows]))
    assert local.loc[local["is_representative"], "score"].eq(1.0).all()
    # a binary IVF index finds the same planted groups (near-duplicates share a cell)
    assert _groups(find_duplicates(features, using="code", max_hamming=MAX_HAMMING, kind="ivf")) == expected
    # multi-index hashing (5 parts of 12 bits at radius 4) is exact too
    mih = find_duplicates(features, using="code", max_hamming=MAX_HAMMING, kind="mih")
    assert mih.attrs["stats"]["kind"] == "mih"
    pd.testing.assert_frame_equal(mih, local)
    # other radii: still the exact components
    assert _groups(find_duplicates(features, using="code", max_hamming=1)) == brute_force_groups(bits, 1)
    assert _groups(find_duplicates(features, using="code", max_hamming=9, kind="mih")) == brute_force_groups(bits, 9)


def test_default_radius_is_the_evaluators_match_of_the_threshold(features):
    assert max_hamming_for(0.85, 256) == 45 == math.floor(256 * math.acos(0.85) / math.pi)
    assert max_hamming_for(1.0, 256) == 0
    groups = find_duplicates(features, 0.97, using="code")
    assert groups.attrs["stats"]["max_hamming"] == math.floor(BITS * math.acos(0.97) / math.pi) == 5


def test_bad_code_arguments_are_refused(features, tmp_path):
    with pytest.raises(ConfigError, match="max_hamming must be in 0..64"):
        find_duplicates(features, using="code", max_hamming=65)
    with pytest.raises(ConfigError, match="max_hamming is for using='code'"):
        find_duplicates(features, max_hamming=3)
    with pytest.raises(ConfigError, match="kind must be one of"):
        find_duplicates(features, using="code", kind="hnsw")
    with pytest.raises(ConfigError, match="using must be one of"):
        find_duplicates(features, using="bits")


def test_bucket_join_of_codes_is_exact_inside_the_buckets(features, bits):
    dataset = open_features(features)
    plan = plan_buckets(dataset, "code", 0.85, nlist=4, probes=4, max_neighbors=0, max_hamming=MAX_HAMMING)
    assert plan.codes and plan.bits == BITS and plan.centroids.shape == (4, BITS)
    rows = [bucket_rows(plan, read_vectors(plan, number)) for number in range(len(plan.files))]
    merged = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    assert merged["vector"].dtype == np.uint8 and merged["vector"].shape[1] == BITS // 8  # packed in the shuffle
    pairs = set()
    for bucket in range(4):
        here = merged["bucket"] == bucket
        lo, hi, scores, _ = join_bucket(plan, merged["key"][here], merged["id"][here], merged["vector"][here],
                                        merged["stored"][here])
        assert (lo < hi).all() and (scores >= 1 - MAX_HAMMING / BITS).all()
        pairs |= set(zip(lo.tolist(), hi.tolist()))
    keys = np.concatenate([read_vectors(plan, n)["key"] for n in range(len(plan.files))])
    signs = bits.astype(np.int32) * 2 - 1
    a, b = np.nonzero(np.triu((BITS - signs @ signs.T) // 2 <= MAX_HAMMING, k=1))
    assert pairs == set(zip(keys[a].tolist(), keys[b].tolist()))


def test_multi_index_hashing_buckets_hold_every_pair(features, bits):
    """Radius 2 of 64 bits: 3 parts of 21 bits; each pair within 2 bits shares a bucket."""
    plan = plan_buckets(open_features(features), "code", 0.85, max_hamming=2)
    assert (plan.mih_parts, plan.part_bits, plan.probes, len(plan.centroids)) == (3, 21, 3, 0)
    rows = [bucket_rows(plan, read_vectors(plan, number)) for number in range(len(plan.files))]
    merged = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    assert len(merged["key"]) == 3 * N and merged["stored"].all()
    pairs = set()
    for bucket in np.unique(merged["bucket"]):
        here = merged["bucket"] == bucket
        lo, hi, _, _ = join_bucket(plan, merged["key"][here], merged["id"][here], merged["vector"][here],
                                   merged["stored"][here])
        pairs |= set(zip(lo.tolist(), hi.tolist()))
    keys = np.concatenate([read_vectors(plan, n)["key"] for n in range(len(plan.files))])
    signs = bits.astype(np.int32) * 2 - 1
    a, b = np.nonzero(np.triu((BITS - signs @ signs.T) // 2 <= 2, k=1))
    assert len(a) > 100 and pairs == set(zip(keys[a].tolist(), keys[b].tolist()))


def test_pairs_cross_the_buckets_the_engines_use(features, bits, local):
    """With 30 buckets some planted pairs are stored apart: the probes must bring them together."""
    plan = plan_buckets(open_features(features), "code", 0.85, nlist=30, probes=1, max_hamming=MAX_HAMMING)
    rows = [bucket_rows(plan, read_vectors(plan, number)) for number in range(len(plan.files))]
    ids, buckets = (np.concatenate([r[name] for r in rows]).tolist() for name in ("id", "bucket"))
    bucket = dict(zip(ids, buckets))
    split = sum(len({bucket[i] for i in members}) > 1 for members in _groups(local))
    assert split > 10


@pytest.mark.ray
def test_ray_gives_the_local_code_groups_and_respects_reviews(features, local, ray_local, tmp_path):
    from imgfeat.retrieval.dedup_ray import find_duplicates_ray

    groups = find_duplicates_ray(features, using="code", max_hamming=MAX_HAMMING, nlist=30, probes=6, partitions=3)
    _same_frame(groups, local)
    stats = groups.attrs["stats"]
    assert (stats["engine"], stats["using"], stats["max_hamming"], stats["vectors"]) == ("ray", "code", MAX_HAMMING, N)
    # radius 2 of 64 bits: 3 parts of 21 bits, bucketed by multi-index hashing (exact)
    mih = find_duplicates_ray(features, using="code", max_hamming=2, partitions=3)
    assert mih.attrs["stats"]["kind"] == "mih-buckets"
    _same_frame(mih, find_duplicates(features, using="code", max_hamming=2))

    pair = local[local["size"] == 2]["id"].iloc[:2].tolist()  # one group of two: the review splits it
    reviews = tmp_path / "reviews.jsonl"
    save_review(reviews, pair)
    reviewed_local = find_duplicates(features, using="code", max_hamming=MAX_HAMMING, reviews=reviews)
    assert reviewed_local.attrs["stats"]["pairs_dropped_by_reviews"] >= 1 and _groups(reviewed_local) != _groups(local)
    reviewed = find_duplicates_ray(features, using="code", max_hamming=MAX_HAMMING, reviews=reviews, nlist=30,
                                   probes=6, partitions=2)
    _same_frame(reviewed, reviewed_local)

    out = tmp_path / "cli" / "groups.parquet"
    assert main(["dedup", str(features), "-o", str(out), "--engine", "ray", "--using", "code", "--max-hamming",
                 str(MAX_HAMMING), "--buckets", "30", "--probes", "6", "--reviews", str(tmp_path / "none.jsonl")]) == 0
    _same_frame(pd.read_parquet(out), local)


@pytest.mark.spark
def test_spark_gives_the_local_code_groups(features, local, spark_session):
    from imgfeat.retrieval.dedup_spark import find_duplicates_spark

    groups = find_duplicates_spark(features, using="code", max_hamming=MAX_HAMMING, nlist=30, probes=6)
    _same_frame(groups, local)
    assert groups.attrs["stats"]["engine"] == "spark" and groups.attrs["stats"]["using"] == "code"
    mih = find_duplicates_spark(features, using="code", max_hamming=2)
    assert mih.attrs["stats"]["kind"] == "mih-buckets"
    _same_frame(mih, find_duplicates(features, using="code", max_hamming=2))


def test_cli_dedup_using_code(features, local, tmp_path, capsys):
    out = tmp_path / "groups.parquet"
    assert main(["dedup", str(features), "-o", str(out), "--using", "code", "--max-hamming", str(MAX_HAMMING),
                 "--reviews", str(tmp_path / "none.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert f"{local['group'].nunique()} groups ({len(local)} images) among {N} at Hamming distance <= 4 of 64 bits" \
        in printed
    _same_frame(pd.read_parquet(out), local)
    assert main(["dedup", str(features), "-o", str(out), "--max-hamming", "4"]) != 0
    assert "--max-hamming is for --using code" in capsys.readouterr().err
