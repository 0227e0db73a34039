"""Learned binary codes: DeepBit / ITQ training, hash files (.npz, .onnx), loading, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import imgfeat
from imgfeat.models.learned_hash import LinearHasher
from imgfeat import cli
from imgfeat.errors import ConfigError
from imgfeat.metrics import hamming_distances, mean_average_precision
from imgfeat.hashtrain import DeepBitSettings, fit_hasher, train_itq
from imgfeat.models import create_hasher
from imgfeat.models.hashing import RandomProjectionHasher
from imgfeat.models.learned_hash import load_hasher, save_hasher

from conftest import FAST_MODELS


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, clusters: int = 20, per_cluster: int = 15, dim: int = 32,
              noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((clusters, dim))
    labels = np.repeat(np.arange(clusters), per_cluster)
    return _normalise(centres[labels] + noise * rng.standard_normal((len(labels), dim))), labels


@pytest.fixture(scope="module")
def deepbit_file(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors, _ = clustered(rng)
    views = _normalise(vectors[:, None, :] + 0.05 * rng.standard_normal((len(vectors), 3, vectors.shape[1])))
    weight, bias, facts = fit_hasher("deepbit", vectors, views, 32, seed=0, settings=DeepBitSettings(epochs=30))
    path = save_hasher(tmp_path_factory.mktemp("hash") / "deepbit.npz", weight, bias, "deepbit", facts)
    return path, vectors, views


def test_learned_hash_round_trip_through_create_hasher(deepbit_file):
    path, vectors, _ = deepbit_file
    hasher = create_hasher(str(path), dim=32, bits=256)  # the file's bit count wins over `bits`
    assert hasher.bits == 32
    assert re.fullmatch(r"deepbit-32-[0-9a-f]{8}", hasher.name)
    codes = hasher(vectors)
    assert codes.dtype == np.uint8 and codes.shape == (len(vectors), 4)
    np.testing.assert_array_equal(codes, create_hasher(str(path), dim=32, bits=256)(vectors))
    # same bit order as hashing.pack_bits: bit k of the code is the sign of projection column k
    projection = vectors @ hasher.weight + hasher.bias
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1).astype(bool), projection > 0)


def test_learned_hash_bits_are_balanced_quantised_and_invariant(deepbit_file):
    path, vectors, views = deepbit_file
    hasher = load_hasher(path, 32)
    bits = np.unpackbits(hasher(vectors), axis=1)
    assert np.abs(bits.mean(axis=0) - 0.5).mean() < 0.12  # bit balance
    assert float(np.tanh(np.abs(hasher.project(vectors))).mean()) > 0.6  # outputs pushed towards +-1
    view_codes = hasher(views[:, 0])
    same = np.diag(hamming_distances(hasher(vectors), view_codes))
    rng = np.random.default_rng(1)
    others = hamming_distances(hasher(vectors), hasher(vectors[rng.permutation(len(vectors))]))
    assert same.mean() < 0.5 * np.diag(others).mean()


def test_onnx_and_npz_files_give_the_same_codes(tmp_path, deepbit_file):
    path, vectors, _ = deepbit_file
    npz = load_hasher(path, 32)
    onnx_path = save_hasher(tmp_path / "h.onnx", npz.weight, npz.bias, "deepbit")
    onnx_hasher = create_hasher(str(onnx_path), 32, 256)
    assert re.fullmatch(r"deepbit-32-[0-9a-f]{8}", onnx_hasher.name) and onnx_hasher.name != npz.name
    np.testing.assert_array_equal(onnx_hasher(vectors), npz(vectors))


def test_dim_mismatch_is_a_config_error(deepbit_file, tmp_path):
    path, _, _ = deepbit_file
    with pytest.raises(ConfigError, match="32-d"):
        create_hasher(str(path), dim=64, bits=64)
    onnx_path = save_hasher(tmp_path / "h.onnx", np.zeros((32, 8)), np.zeros(8), "itq")
    with pytest.raises(ConfigError, match="trained for 32-d"):
        load_hasher(onnx_path, 31)


class _Boom:
    def __reduce__(self):
        return (Path("boom-was-unpickled").write_text, ("x",))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npz"
    np.savez(path, weight=np.array([_Boom()], dtype=object), bias=np.zeros(8, np.float32))
    with pytest.raises(ConfigError, match="not a valid imgfeat hash file"):
        load_hasher(path, 32)
    assert not (tmp_path / "boom-was-unpickled").exists()
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError):
        load_hasher(tmp_path / "garbage.onnx", 32)


def test_itq_beats_random_projection_on_retrieval():
    rng = np.random.default_rng(3)
    dim, bits = 64, 16
    # structured data: most variance in a 16-d subspace, as real embeddings have
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    scales = np.r_[np.full(16, 1.0), np.full(dim - 16, 0.1)]
    database = (rng.standard_normal((400, dim)) * scales) @ basis.T
    queries = database[:100] + 0.15 * (rng.standard_normal((100, dim)) * scales) @ basis.T
    relevant = np.zeros((100, 400), bool)
    relevant[np.arange(100), np.arange(100)] = True
    weight, bias = train_itq(database, bits)
    itq = LinearHasher(weight, bias, "itq")
    rproj = RandomProjectionHasher(dim, bits, seed=0)
    itq_map = mean_average_precision(hamming_distances(itq(queries), itq(database)), relevant)
    rproj_map = mean_average_precision(hamming_distances(rproj(queries), rproj(database)), relevant)
    assert itq_map > rproj_map + 0.05, (itq_map, rproj_map)


def test_itq_refuses_more_bits_than_dimensions():
    with pytest.raises(ConfigError, match="must be <= the embedding size"):
        train_itq(np.random.default_rng(0).standard_normal((500, 16)), 32)


def test_cli_train_hash_then_extract_with_it(blob_folder, tmp_path, capsys):
    features = tmp_path / "features"
    imgfeat.extract(blob_folder, features, **FAST_MODELS)
    hash_path = tmp_path / "hash.onnx"
    code = cli.main(["train-hash", str(features), "-o", str(hash_path), "--bits", "128", "--method", "deepbit",
                     "--views", "2", "--epochs", "5", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "deepbit-128-" in out and "7 images x 2 views" in out
    hasher = load_hasher(hash_path, 64)
    assert hasher.meta["embedder"] == "test-tiny" and hasher.meta["rows_with_views"] == 7

    coded = tmp_path / "coded"
    imgfeat.extract(blob_folder, coded, hasher=str(hash_path), **FAST_MODELS)
    manifest = json.loads((coded / "_manifest.json").read_text())
    assert manifest["models"]["hasher"] == hasher.name
    import pyarrow.parquet as pq
    table = pq.read_table(next(coded.glob("part-*.parquet")))
    assert table.schema.field("code").type.byte_width == 16
    assert set(table.column("hasher").to_pylist()) == {hasher.name}
    row = table.column("status").to_pylist().index("ok")
    embedding = np.asarray(table.column("embedding")[row].as_py(), np.float32)[None]
    assert table.column("code")[row].as_py() == hasher(embedding)[0].tobytes()

    # ITQ needs bits <= dim: a clear error, exit 1
    code = cli.main(["train-hash", str(features), "-o", str(tmp_path / "itq.npz"), "--bits", "128",
                     "--method", "itq", "--views", "0"])
    assert code == 1
    assert "must be <= the embedding size" in capsys.readouterr().err


def test_cli_records_the_hash_file_as_an_absolute_path(blob_folder, tmp_path, monkeypatch):
    """Search and serve read the hash file again from the manifest, from any folder."""
    features = tmp_path / "features"
    imgfeat.extract(blob_folder, features, **FAST_MODELS)
    assert cli.main(["train-hash", str(features), "-o", str(tmp_path / "h.npz"), "--bits", "64",
                     "--method", "deepbit", "--views", "2", "--epochs", "2", "--no-progress"]) == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["extract", str(blob_folder), "-o", "coded", "--hash", "h.npz", "--detector", "test-blob",
                     "--embedder", "test-tiny", "--workers", "0", "--no-progress"]) == 0
    recorded = json.loads((tmp_path / "coded" / "_manifest.json").read_text())["config"]["embed"]["hasher"]
    assert recorded == str(tmp_path / "h.npz")
