"""Sharded indexes: built part by part, searched together with the same answers as one index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

import imgfeat  # noqa: E402
from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ConfigError, SourceError, UnknownId  # noqa: E402
from imgfeat.retrieval.index import FeatureIndex  # noqa: E402
from imgfeat.retrieval.search import search  # noqa: E402
from imgfeat.dataset import open_features  # noqa: E402
from imgfeat.retrieval.sharded import ShardedIndex, build_sharded, open_index, split_files  # noqa: E402

from conftest import FAST_MODELS, blob_image  # noqa: E402
from test_index import clustered, write_features  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[np.ndarray, list[str], Path]:
    """3000 ok rows (+7 error rows) in 7 files of 500 rows."""
    vectors = clustered(3000, dim=64, clusters=60)
    ids = [f"id{i:05d}" for i in range(len(vectors))]
    folder = write_features(tmp_path_factory.mktemp("feat") / "f", vectors, ids, errors=7)
    return vectors, ids, folder


@pytest.fixture(scope="module")
def flat_pair(data, tmp_path_factory) -> tuple[FeatureIndex, ShardedIndex, Path]:
    _, _, folder = data
    path = tmp_path_factory.mktemp("idx") / "sharded"
    build_sharded(folder, path, 3, kind="flat")
    return FeatureIndex.build(folder, kind="flat"), ShardedIndex.load(path), path


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def test_split_files_keeps_whole_files_in_balanced_contiguous_groups(data):
    dataset = open_features(data[2])
    groups = split_files(dataset, 3)
    assert [f for group in groups for f in group] == dataset.files  # every file once, in order
    assert sorted(len(g) for g in groups) == [2, 2, 3]
    with pytest.raises(ConfigError, match="7 feature files but 8 shards"):
        split_files(dataset, 8)


def test_folder_layout_and_description(flat_pair):
    single, sharded, path = flat_pair
    info = json.loads((path / "index.json").read_text())
    assert info["sharded"] and info["kind"] == "flat" and info["dim"] == 64 and info["code_bytes"] == 8
    assert [p["name"] for p in info["parts"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sum(p["count"] for p in info["parts"]) == info["count"] == len(sharded) == len(single) == 3000
    for part in info["parts"]:  # each part is a normal index folder of its own files
        assert len(FeatureIndex.load(path / part["name"])) == part["count"] > 0
    assert sharded.models == single.models and sharded.config == single.config and sharded.crop == single.crop
    with pytest.raises(SourceError, match="sharded index of 3 parts"):
        FeatureIndex.load(path)


def test_flat_sharded_search_equals_single(flat_pair):
    single, sharded, _ = flat_pair
    queries = clustered(50, dim=64, clusters=60, seed=7)
    want_scores, want_ids = single.search(queries, k=10)
    got_scores, got_ids = sharded.search(queries, k=10)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert got_scores.dtype == np.float32 and got_scores.shape == (50, 10)
    # k above the count: every vector once, as one index returns
    scores, ids = sharded.search(queries[:2], k=5000)
    assert scores.shape == (2, 3000) and len(set(ids[0])) == 3000 and (np.diff(scores[0]) <= 1e-6).all()


def test_code_search_merges_hamming_distances_ascending(data, flat_pair):
    _, ids, _ = data
    single, sharded, _ = flat_pair
    stored = single.codes(ids)
    queries = stored[::300] ^ np.uint8(0b101)  # near some stored codes
    want_d, want_ids = single.search_codes(queries, k=20)
    got_d, got_ids = sharded.search_codes(queries, k=20)
    np.testing.assert_array_equal(got_d, want_d)  # the same distances, nearest first
    position = {item_id: i for i, item_id in enumerate(ids)}
    for row in range(len(queries)):
        found = [position[i] for i in got_ids[row]]
        np.testing.assert_array_equal(hamming(stored[found], queries[row]), got_d[row])  # true distances
        cut = got_d[row][-1]  # ties at the last distance may pick other ids; those nearer may not
        assert {i for i, d in zip(got_ids[row], got_d[row]) if d < cut} == \
            {i for i, d in zip(want_ids[row], want_d[row]) if d < cut}


def test_lookups_by_id_go_to_the_part_that_holds_it(data, flat_pair):
    _, ids, _ = data
    single, sharded, _ = flat_pair
    some = [ids[2999], ids[0], ids[1500], ids[10]]  # from the last, first and middle parts
    np.testing.assert_allclose(sharded.vectors(some), single.vectors(some))
    np.testing.assert_array_equal(sharded.codes(some), single.codes(some))
    assert sharded.metadata(some + ["nope"]) == single.metadata(some + ["nope"])
    assert sharded.metadata(["nope"]) == [None]
    assert sharded.contains(ids[2999]) and not sharded.contains("nope") and not sharded.contains("bad3000")
    with pytest.raises(UnknownId, match="'nope'"):
        sharded.vectors([ids[0], "nope"])
    assert sorted(sharded.ids()) == sorted(ids)


def test_search_by_id_frame_is_the_same(data, flat_pair):
    _, ids, _ = data
    single, sharded, _ = flat_pair
    queries = [ids[5], ids[2500]]
    for using in ("embedding", "code"):
        want = search(single, ids=queries, k=5, using=using, exclude_self=True)
        got = search(sharded, ids=queries, k=5, using=using, exclude_self=True)
        assert list(got["query"]) == list(want["query"])
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
        if using == "embedding":
            assert list(got["id"]) == list(want["id"]) and queries[0] not in set(got["id"][:5])


def test_ivf_parts_share_one_quantiser_and_match_one_ivf_index(data, tmp_path):
    _, _, folder = data
    single = FeatureIndex.build(folder, kind="ivf", params={"nlist": 16, "nprobe": 3})
    sharded = build_sharded(folder, tmp_path / "ivf", 3, kind="ivf", params={"nlist": 16, "nprobe": 3})
    queries = clustered(40, dim=64, clusters=60, seed=3)
    want_scores, want_ids = single.search(queries, k=10)
    got_scores, got_ids = sharded.search(queries, k=10)
    # the same trained cells in every part: the same cells visited, the same neighbours
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    sharded.params["nprobe"] = 16  # a search parameter set on the sharded index reaches every part
    exact = FeatureIndex.build(folder, kind="flat").search(queries, k=10)
    assert sharded.search(queries, k=10)[1] == exact[1]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_memory_mapped_parts_answer_the_same_and_are_read_only(data, tmp_path, kind):
    _, ids, folder = data
    params = {"nlist": 16, "nprobe": 4} if kind == "ivf" else None
    built = build_sharded(folder, tmp_path / kind, 2, kind=kind, params=params)
    mapped = imgfeat.load_index(tmp_path / kind, mmap=True)
    assert mapped.mmap and len(mapped) == 3000
    queries = clustered(20, dim=64, clusters=60, seed=5)
    want_scores, want_ids = built.search(queries, k=10)
    got_scores, got_ids = mapped.search(queries, k=10)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)
    np.testing.assert_allclose(mapped.vectors(ids[:3]), built.vectors(ids[:3]))
    with pytest.raises(ConfigError, match="read-only"):
        mapped.remove(ids[:1])
    with pytest.raises(ConfigError, match="read-only"):
        mapped.add(folder)
    assert len(mapped) == 3000


def test_memory_mapping_a_single_index_is_refused(data, tmp_path, capsys):
    FeatureIndex.build(data[2], kind="flat").save(tmp_path / "one")
    with pytest.raises(ConfigError, match="single index"):
        imgfeat.load_index(tmp_path / "one", mmap=True)
    assert isinstance(imgfeat.load_index(tmp_path / "one"), FeatureIndex)
    assert main(["serve", "--index", str(tmp_path / "one"), "--mmap"]) == 1  # fails before serving
    assert "memory-mapped loading is for sharded indexes" in capsys.readouterr().err


def test_remove_routes_to_parts_and_saves_in_place(data, tmp_path):
    _, ids, folder = data
    path = tmp_path / "idx"
    index = build_sharded(folder, path, 3, kind="flat")
    with pytest.raises(UnknownId, match="'nope'"):
        index.remove([ids[0], "nope"])
    assert len(index) == 3000 and index.contains(ids[0])  # nothing removed
    assert index.remove([ids[0], ids[2999], "nope"], missing_ok=True) == 2
    index.save()
    again = open_index(path)
    assert isinstance(again, ShardedIndex) and len(again) == 2998
    assert not again.contains(ids[0]) and not again.contains(ids[2999]) and again.contains(ids[1])
    assert ids[0] not in again.search(again.vectors([ids[1]]), k=3000)[1][0]
    described = json.loads((path / "index.json").read_text())
    assert described["count"] == 2998 and described["parts"][0]["count"] == len(FeatureIndex.load(path / "shard-00000"))
    assert again.add(folder) == (2, 2998)  # the two removed ids come back, as one more part
    assert again.parts[-1] == "shard-00003" and len(again) == 3000 and again.contains(ids[0])
    with pytest.raises(ConfigError, match="saved in place"):
        again.save(tmp_path / "elsewhere")


def test_add_builds_one_more_part_without_touching_the_others(data, tmp_path, capsys):
    import faiss

    vectors, ids, _ = data
    first = write_features(tmp_path / "first", vectors[:2000], ids[:2000])
    later = write_features(tmp_path / "later", vectors[1900:], ids[1900:])  # 100 ids already indexed
    index = tmp_path / "idx"
    assert main(["index", str(first), "-o", str(index), "--shards", "2", "--kind", "ivf"]) == 0
    before = {p: p.stat().st_mtime_ns for p in index.glob("shard-*/*")}
    capsys.readouterr()
    assert main(["index", str(later), "-o", str(index), "--add"]) == 0
    assert "added 1000 vectors (2000 -> 3000; 100 ids already there, skipped)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the old parts were not rewritten
    sharded = open_index(index)
    assert sharded.parts == ["shard-00000", "shard-00001", "shard-00002"] and len(sharded) == 3000
    assert sharded.describe()["parts"][2]["count"] == 1000
    # the new part starts from the quantiser trained at build time
    cells = [faiss.read_index(str(index / p / "vectors.faiss")) for p in ("shard-00000", "shard-00002")]
    np.testing.assert_array_equal(*(c.quantizer.reconstruct_n(0, c.nlist) for c in cells))
    sharded.params["nprobe"] = sharded.params["nlist"]  # every cell: exact, comparable to flat
    exact = FeatureIndex.build(sorted(first.glob("*.parquet")) + sorted(later.glob("*.parquet")), kind="flat")
    queries = clustered(10, dim=64, clusters=60, seed=9)
    assert sharded.search(queries, k=10)[1] == exact.search(queries, k=10)[1]
    assert open_index(index).add(later) == (0, 1100)  # nothing new: no empty part
    assert len(open_index(index).parts) == 3


def test_a_missing_or_corrupt_part_is_a_clear_error(data, tmp_path):
    _, _, folder = data
    path = tmp_path / "idx"
    build_sharded(folder, path, 3, kind="flat")
    vectors_file = path / "shard-00001" / "vectors.faiss"
    vectors_file.write_bytes(vectors_file.read_bytes()[:100])
    with pytest.raises(SourceError, match="part shard-00001 cannot be read"):
        open_index(path)
    lazy = ShardedIndex.load(path, lazy=True)  # lazy: the first search that needs it fails
    with pytest.raises(SourceError, match="shard-00001"):
        lazy.search(np.ones(64, np.float32))
    (path / "shard-00001" / "vectors.faiss").unlink()
    (path / "shard-00001" / "codes.faiss").unlink()
    for name in ("ids.parquet", "index.json"):
        (path / "shard-00001" / name).unlink()
    (path / "shard-00001").rmdir()
    with pytest.raises(SourceError, match="part shard-00001 is missing"):
        imgfeat.load_index(path)
    (path / "index.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        imgfeat.load_index(path)


def test_api_index_with_shards(data, tmp_path):
    _, ids, folder = data
    with pytest.raises(ConfigError, match="give the output folder"):
        imgfeat.index(folder, shards=2)
    built = imgfeat.index(folder, tmp_path / "idx", shards=2, codes=False)
    assert isinstance(built, ShardedIndex) and len(built) == 3000 and built.code_bytes == 0
    hits = imgfeat.search(tmp_path / "idx", ids=[ids[42]], k=1)
    assert hits["id"].tolist() == [ids[42]] and hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="no binary codes"):
        built.search_codes(np.zeros(8, np.uint8))


def test_cli_index_shards_search_and_remove(data, tmp_path, capsys):
    _, ids, folder = data
    index = tmp_path / "idx"
    assert main(["index", str(folder), "-o", str(index), "--shards", "3", "--kind", "flat"]) == 0
    assert "indexed 3000 image vectors (flat, 64-d, 64-bit codes, 3 parts)" in capsys.readouterr().out
    assert sorted(p.name for p in index.iterdir()) == ["index.json", "shard-00000", "shard-00001", "shard-00002"]
    assert main(["search", str(index), "--id", ids[7], "-k", "3", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in records] == [1, 2, 3] and records[0]["id"] == ids[7]
    assert main(["search", str(index), "--id", ids[7], "-k", "3", "--json", "--mmap"]) == 0
    assert json.loads(capsys.readouterr().out) == records  # mapped: the same answers
    assert main(["index", str(index)]) == 0
    assert "parts: 3" in capsys.readouterr().out
    assert main(["index", str(index), "--remove", ids[7]]) == 0
    assert "2999 left" in capsys.readouterr().out
    assert main(["index", str(folder), "-o", str(tmp_path / "x"), "--shards", "0"]) != 0
    assert "--shards must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> tuple[Path, Path]:
    """Six blob images extracted with the tiny test models into 3 files, indexed in 3 parts by the CLI."""
    root = tmp_path_factory.mktemp("blobs")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        blob_image(photos / f"img{i}.jpg", offset=i * 12, colour=(40 * i, 200 - 30 * i, 90))
    report = imgfeat.extract(photos, root / "features", shard_size=2, **FAST_MODELS)
    assert report.ok == 6
    assert main(["index", str(root / "features"), "-o", str(root / "idx"), "--shards", "3"]) == 0
    return photos, root / "idx"


def test_cli_search_by_image_on_a_sharded_index(blobs, capsys):
    photos, index = blobs
    capsys.readouterr()
    assert main(["search", str(index), str(photos / "img4.jpg"), "-k", "2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["path"].endswith("img4.jpg") and records[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(records) == 2 and records[1]["score"] < records[0]["score"]


def test_serve_a_sharded_index(blobs):
    import warnings

    from imgfeat.serve import create_app

    with warnings.catch_warnings():  # starlette asks for `httpx2`; plain httpx still works
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    photos, index = blobs
    app = create_app(index)
    assert isinstance(app.state.service.index, ShardedIndex)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        answer = client.post("/search?k=3", files={"image": ("q.jpg", (photos / "img2.jpg").read_bytes())})
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert results[0]["path"].endswith("img2.jpg") and len(results) == 3
        assert client.get(f"/items/{results[1]['id']}").json()["path"] == results[1]["path"]
        assert client.get("/items/nope").status_code == 404


def test_build_from_remote_features_reads_each_part_from_the_filesystem(data, tmp_path):
    """Features behind an fsspec URL (the in-memory filesystem stands in for object storage)."""
    import fsspec

    _, ids, folder = data
    fs = fsspec.filesystem("memory")
    for path in sorted(folder.iterdir()):
        fs.pipe(f"/remote-features/{path.name}", path.read_bytes())
    try:
        remote = build_sharded("memory://remote-features", tmp_path / "idx", 3, kind="flat")
        local = FeatureIndex.build(folder, kind="flat")
        assert len(remote) == 3000 and remote.describe()["parts"][2]["files"][-1].endswith("part-00006.parquet")
        queries = clustered(10, dim=64, clusters=60, seed=11)
        assert remote.search(queries, k=5)[1] == local.search(queries, k=5)[1]
        assert remote.metadata([ids[9]]) == local.metadata([ids[9]])
    finally:
        fs.rm("/remote-features", recursive=True)


def test_dedup_on_a_sharded_folder_says_what_to_give_instead(flat_pair):
    from imgfeat.retrieval.dedup import find_duplicates

    with pytest.raises(SourceError, match="takes the features"):
        find_duplicates(flat_pair[2], 0.9)
    with pytest.raises(ConfigError, match="sharded index's parts"):
        find_duplicates(flat_pair[1], 0.9)  # the loaded object, not its folder
