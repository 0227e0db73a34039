"""FeatureIndex: build/save/load, exact vs approximate kinds, add without rebuild, remove, Hamming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("faiss")

from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ConfigError, OutputError, SourceError, UnknownId  # noqa: E402
from imgfeat.retrieval.index import FeatureIndex  # noqa: E402
from imgfeat.schema import output_schema  # noqa: E402

MODELS = {"detector": "none", "embedder": "synthetic", "hasher": "rproj-64-s0"}


def write_features(folder: Path, vectors: np.ndarray, ids: list[str], *, shard_size: int = 500,
                   dtype: str = "float32", models: dict | None = None, errors: int = 0) -> Path:
    """A feature folder like `imgfeat extract` writes, from given vectors (plus `errors` error rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    codes = np.packbits(vectors[:, :64] > 0, axis=1) if dim >= 64 else np.packbits(
        np.resize(vectors > 0, (n, 64)), axis=1)
    schema = output_schema(dim, 8, dtype, whole_image=False)
    total = n + errors
    for shard, start in enumerate(range(0, total, shard_size)):
        stop = min(total, start + shard_size)
        rows = range(start, stop)
        ok = np.array([r < n for r in rows])
        emb = np.zeros((stop - start, dim), np.float16 if dtype == "float16" else np.float32)
        emb[ok] = vectors[start:min(stop, n)]
        code = np.zeros((stop - start, 8), np.uint8)
        code[ok] = codes[start:min(stop, n)]
        value_type = schema.field("embedding").type
        table = pa.table({
            "id": [ids[r] if r < n else f"bad{r}" for r in rows],
            "path": [f"/img/{ids[r] if r < n else f'bad{r}'}.jpg" for r in rows],
            "status": ["ok" if r < n else "error" for r in rows],
            "error": [None if r < n else "corrupt: test" for r in rows],
            "width": pa.array([640] * len(rows), pa.int32()),
            "height": pa.array([480] * len(rows), pa.int32()),
            "box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([1, 2, 300, 400], len(rows)), pa.float32()), 4),
            "label": ["thing"] * len(rows),
            "score": pa.array([0.9] * len(rows), pa.float32()),
            "crop": ["object"] * len(rows),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), value_type.value_type), dim,
                                                           mask=pa.array(~ok)),
            "code": pa.array([c.tobytes() if o else None for c, o in zip(code, ok)], pa.binary(8)),
            "detector": [MODELS["detector"]] * len(rows), "embedder": [MODELS["embedder"]] * len(rows),
            "hasher": [MODELS["hasher"]] * len(rows),
        }, schema=schema)
        pq.write_table(table, folder / f"part-{shard:05d}.parquet")
    manifest = {"models": models or MODELS, "config": {"embed": {"model": "synthetic"}}, "num_shards": shard + 1}
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    return folder


def clustered(n: int, dim: int = 32, clusters: int = 40, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[np.ndarray, list[str], Path]:
    vectors = clustered(2000)
    ids = [f"id{i:05d}" for i in range(len(vectors))]
    folder = write_features(tmp_path_factory.mktemp("feat") / "f", vectors, ids, errors=7)
    return vectors, ids, folder


def test_flat_is_exact_and_survives_save_load(data, tmp_path):
    vectors, ids, folder = data
    index = FeatureIndex.build(folder)
    assert index.kind == "flat" and len(index) == 2000 and index.dim == 32  # error rows not indexed
    assert index.models == MODELS and index.config == {"embed": {"model": "synthetic"}}
    queries = vectors[:20]
    scores, found = index.search(queries, k=5)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert [row for row in found] == [[ids[j] for j in row] for row in exact]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    index.save(tmp_path / "ix")
    assert {p.name for p in (tmp_path / "ix").iterdir()} >= {"index.json", "vectors.faiss", "codes.faiss", "ids.parquet"}
    loaded = FeatureIndex.load(tmp_path / "ix")
    scores2, found2 = loaded.search(queries, k=5)
    assert found2 == found and np.allclose(scores2, scores)
    assert loaded.metadata(["id00003", "nope"]) == [
        {"id": "id00003", "path": "/img/id00003.jpg", "box": [1.0, 2.0, 300.0, 400.0], "label": "thing",
         "score": pytest.approx(0.9), "width": 640, "height": 480, "crop": "object"}, None]
    assert loaded.contains("id00003") and not loaded.contains("bad2000")


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_kinds_agree_with_flat_on_top1(data, kind):
    vectors, ids, folder = data
    flat = FeatureIndex.build(folder, kind="flat")
    approx = FeatureIndex.build(folder, kind=kind)
    assert approx.kind == kind
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(len(vectors), 100, replace=False)]
    queries = queries + 0.01 * rng.standard_normal(queries.shape).astype(np.float32)
    _, exact = flat.search(queries, k=1)
    if kind == "ivfpq":  # compressed: the exact nearest is among its first 10
        _, found = approx.search(queries, k=10)
        agree = np.mean([a[0] in b for a, b in zip(exact, found)])
    else:
        _, found = approx.search(queries, k=1)
        agree = np.mean([a[0] == b[0] for a, b in zip(exact, found)])
    assert agree >= 0.95, agree


def test_float16_features_are_read_as_float32(tmp_path):
    vectors = clustered(300, dim=16)
    ids = [f"h{i}" for i in range(300)]
    index = FeatureIndex.build(write_features(tmp_path / "f16", vectors, ids, dtype="float16"))
    scores, found = index.search(vectors[:3], k=1)
    assert [f[0] for f in found] == ids[:3]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-3)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_equals_full_rebuild_and_skips_present_ids(data, tmp_path, kind):
    vectors, ids, _ = data
    first = write_features(tmp_path / "a", vectors[:1200], ids[:1200])
    second = write_features(tmp_path / "b", vectors[1000:], ids[1000:])  # overlaps 1000..1199
    full = write_features(tmp_path / "all", vectors, ids)
    index = FeatureIndex.build(first, kind=kind)
    assert index.add(second) == (800, 200)  # 200 ids were already indexed
    assert index.add(second) == (0, 1000)
    assert len(index) == 2000
    rebuilt = FeatureIndex.build(full, kind=kind)
    queries = vectors[::97]
    s1, f1 = index.search(queries, k=3)
    s2, f2 = rebuilt.search(queries, k=3)
    if kind == "flat":
        assert f1 == f2 and np.allclose(s1, s2)
    else:  # approximate kinds: same top-1, same scores for it
        assert [r[0] for r in f1] == [r[0] for r in f2]
        assert np.allclose(s1[:, 0], s2[:, 0], atol=1e-5)
    assert index.sources == [str(first.resolve()), str(second.resolve())]


def test_add_refuses_other_embedder(data, tmp_path):
    vectors, ids, folder = data
    other = write_features(tmp_path / "o", vectors[:10], [f"x{i}" for i in range(10)],
                           models={**MODELS, "embedder": "mobilenet-v2"})
    with pytest.raises(ConfigError, match="embedder"):
        FeatureIndex.build(folder).add(other)


def test_dim_mismatch_is_a_clear_error(data, tmp_path):
    vectors, ids, folder = data
    index = FeatureIndex.build(folder)
    with pytest.raises(ConfigError, match="32-d"):
        index.search(np.ones((1, 64), np.float32))
    other = write_features(tmp_path / "d64", clustered(10, dim=64), [f"y{i}" for i in range(10)])
    with pytest.raises(ConfigError, match="64-d embeddings but this index holds 32-d"):
        index.add(other)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_ids(data, tmp_path, kind):
    vectors, ids, folder = data
    index = FeatureIndex.build(folder, kind=kind)
    gone = ids[:50]
    assert index.remove(gone) == 50
    assert len(index) == 1950 and not index.contains(ids[0])
    index.save(tmp_path / "ix")
    index = FeatureIndex.load(tmp_path / "ix")
    _, found = index.search(vectors[:50], k=5)
    assert not set(gone) & {i for row in found for i in row}
    _, found_codes = index.search_codes(index.codes(ids[50:53]), k=len(index))
    assert len(found_codes[0]) == 1950 and not set(gone) & {i for row in found_codes for i in row}
    with pytest.raises(UnknownId, match="id00000"):
        index.remove(["id00000"])
    assert index.remove(["id00000"], missing_ok=True) == 0
    with pytest.raises(UnknownId):
        index.vectors(["id00001"])


def test_hnsw_rebuilds_after_many_removals(data):
    vectors, ids, folder = data
    index = FeatureIndex.build(folder, kind="hnsw")
    index.remove(ids[:700])  # > 30 % of the graph: rebuilt without them
    assert index._float.ntotal == 1300 and len(index._removed) == 0
    _, found = index.search(vectors[700:710], k=1)
    assert [r[0] for r in found] == ids[700:710]


def test_binary_search_matches_numpy_hamming(data):
    vectors, ids, folder = data
    index = FeatureIndex.build(folder)
    codes = np.stack([np.frombuffer(bytes(c), np.uint8) for c in
                      pq.ParquetDataset(str(folder)).read(columns=["code"]).column("code").to_pylist()[:2000]])
    queries = codes[[0, 5, 999]].copy()
    queries[:, 0] ^= 0b1011  # flip three bits
    distances, found = index.search_codes(queries, k=10)
    reference = np.unpackbits(queries[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    for q in range(3):
        expected = np.sort(reference[q])[:10]
        assert distances[q].tolist() == expected.tolist()
        assert all(reference[q][ids.index(i)] == d for i, d in zip(found[q], distances[q]))
    assert distances[0, 0] == 3
    np.testing.assert_array_equal(index.codes(["id00005"])[0], codes[5])


def test_load_and_save_errors(data, tmp_path):
    _, _, folder = data
    with pytest.raises(SourceError, match="not an index folder"):
        FeatureIndex.load(folder)
    with pytest.raises(SourceError, match="index folder"):
        index = FeatureIndex.build(folder)
        index.save(tmp_path / "ix")
        FeatureIndex.build(tmp_path / "ix")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(OutputError):
        index.save(tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").exists()
    with pytest.raises(ConfigError, match="needs at least"):
        FeatureIndex.build(write_features(tmp_path / "small", clustered(50), [f"s{i}" for i in range(50)]),
                           kind="ivfpq")
    with pytest.raises(ConfigError, match="unknown index kind"):
        FeatureIndex.build(folder, kind="lsh")


def test_cli_index_add_remove_describe(data, tmp_path, capsys):
    vectors, ids, _ = data
    first = write_features(tmp_path / "a", vectors[:1500], ids[:1500])
    second = write_features(tmp_path / "b", vectors[1500:], ids[1500:])
    out = tmp_path / "ix"
    assert main(["index", str(first), "-o", str(out)]) == 0
    assert "indexed 1500 image vectors (flat, 32-d, 64-bit codes)" in capsys.readouterr().out
    assert main(["index", str(second), "-o", str(out), "--add"]) == 0
    assert "added 500 vectors (1500 -> 2000" in capsys.readouterr().out
    assert main(["index", str(out), "--remove", "id00001", "id00002"]) == 0
    assert "removed 2 ids; 1998 left" in capsys.readouterr().out
    assert main(["index", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1998
    assert main(["index", str(out), "--remove", "nope"]) == 1
    assert "not in the index: 'nope'" in capsys.readouterr().err
