"""Retrieval descriptors (issue 13 item 3): learned PCA-whitening, multi-view averaging, GeM
pooling. Fast tests use the tiny test-* models; the GeM export against torch is `slow`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgfeat
from imgfeat import extract
from imgfeat.cli import main
from imgfeat.config import PipelineConfig
from imgfeat.dataset import embedding_matrix, open_features
from imgfeat.errors import ConfigError, ModelUnavailable
from imgfeat.models import create_embedder
from imgfeat.models.embedders import MultiViewEmbedder, with_views
from imgfeat.retrieval.index import FeatureIndex
from imgfeat.whitening import fit_whitening, load_whitening, save_whitening, train_whiten

from conftest import FAST_MODELS


def _correlated(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) * np.linspace(3.0, 0.1, dim)[:, None]
    return (rng.normal(size=(n, dim)) @ mixing + 5.0).astype(np.float32)


# ---------------------------------------------------------------- whitening: the math and the file

def test_whitening_decorrelates_and_cuts_to_dim():
    vectors = _correlated(2000, 32)
    whitening = fit_whitening(vectors, 8)
    assert (whitening.dim_in, whitening.dim, whitening.name) == (32, 8, "pcaw-8")
    projected = (vectors - whitening.mean) @ whitening.projection  # before the final L2 norm
    np.testing.assert_allclose(np.cov(projected.T, bias=True), np.eye(8), atol=1e-3)
    out = whitening(vectors[:5])
    assert out.shape == (5, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # power 0 is plain PCA: orthonormal directions, variances kept
    pca = fit_whitening(vectors, 8, power=0.0)
    assert pca.name == "pca-8"
    np.testing.assert_allclose(pca.projection.T @ pca.projection, np.eye(8), atol=1e-4)


def test_whitening_refuses_bad_sizes():
    vectors = _correlated(20, 16)
    with pytest.raises(ConfigError, match="more than 16 vectors"):
        fit_whitening(vectors[:16], 16)
    with pytest.raises(ConfigError, match="1..16"):
        fit_whitening(vectors, 17)
    whitening = fit_whitening(vectors, 4)
    with pytest.raises(ConfigError, match="16-d"):
        whitening(np.zeros((2, 8), np.float32))


def test_whitening_file_round_trip_and_checks(tmp_path):
    whitening = fit_whitening(_correlated(300, 24), 6, meta={"embedder": "test-tiny"})
    path = save_whitening(tmp_path / "w.npz", whitening)
    loaded = load_whitening(path, dim_in=24)
    np.testing.assert_array_equal(loaded.projection, whitening.projection)
    np.testing.assert_array_equal(loaded.mean, whitening.mean)
    assert loaded.meta["embedder"] == "test-tiny" and loaded.meta["fitted_on"] == 300
    assert loaded.name.startswith("pcaw-6-") and len(loaded.name) == len("pcaw-6-") + 8
    probe = _correlated(4, 24, seed=3)
    np.testing.assert_allclose(loaded(probe), whitening(probe), atol=1e-6)
    with pytest.raises(ConfigError, match="whitens 24-d embeddings but the embedder makes 64-d"):
        load_whitening(path, dim_in=64)
    with pytest.raises(ModelUnavailable, match="train-whiten"):
        load_whitening(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", weight=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="not a whitening file"):
        load_whitening(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match=".npz"):
        save_whitening(tmp_path / "w.pkl", whitening)


def test_whitening_save_is_atomic(tmp_path, monkeypatch):
    path = save_whitening(tmp_path / "w.npz", fit_whitening(_correlated(100, 8), 4))
    before = path.read_bytes()

    def broken(fh, **arrays):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_whitening(path, fit_whitening(_correlated(100, 8, seed=1), 4))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


# ---------------------------------------------------------------- whitening in the pipeline

@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory) -> Path:
    """24 images of random coloured rectangles: enough distinct tiny-embedder vectors to fit on."""
    folder = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(0)
    for i in range(24):
        image = np.full((120, 160, 3), 255, np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, 120), rng.integers(0, 80)
            image[y:y + 40, x:x + 40] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    return folder


def test_train_whiten_then_extract_whitened(varied_folder, tmp_path, capsys):
    plain = tmp_path / "plain"
    extract(varied_folder, plain, **FAST_MODELS)
    whiten_file = tmp_path / "whiten.npz"
    assert main(["train-whiten", str(plain), "-o", str(whiten_file), "--dim", "8"]) == 0
    assert "pcaw-8-" in capsys.readouterr().out
    whitening = load_whitening(whiten_file, dim_in=64)
    assert whitening.meta["embedder"] == "test-tiny" and whitening.meta["vector"] == "image_embedding"

    whitened = tmp_path / "whitened"
    extract(varied_folder, whitened, whiten=str(whiten_file), **FAST_MODELS)
    manifest = json.loads((whitened / "_manifest.json").read_text())
    assert manifest["models"]["embedder"] == f"test-tiny+{whitening.name}"
    assert manifest["model_digests"]["whitening"] == whitening.digest
    assert manifest["config"]["embed"]["whiten"] == str(whiten_file)

    dataset = open_features(whitened)
    assert dataset.dim == 8
    table = dataset.read(["id", "embedding", "image_embedding"], status="ok")
    raw = open_features(plain).read(["id", "embedding", "image_embedding"], status="ok")
    assert table.column("id").to_pylist() == raw.column("id").to_pylist()
    for column in ("embedding", "image_embedding"):
        expected = whitening(embedding_matrix(raw.column(column), 64))
        np.testing.assert_allclose(embedding_matrix(table.column(column), 8), expected, atol=1e-5)

    # one index never mixes whitened and unwhitened vectors, whichever comes first
    index = FeatureIndex.build(plain)
    with pytest.raises(ConfigError, match="embedder"):
        index.add(whitened)
    with pytest.raises(ConfigError, match="embedder"):
        FeatureIndex.build(whitened).add(plain)
    # queries are whitened the way the index's features were (the config carries the file)
    hits = imgfeat.search(FeatureIndex.build(whitened, vector="image"), [str(varied_folder / "img03.png")], k=1)
    assert hits["path"].iloc[0].endswith("img03.png") and hits["score"].iloc[0] > 0.999
    # nor is a whitening fitted on whitened features
    with pytest.raises(ConfigError, match="already whitened"):
        train_whiten(whitened, tmp_path / "again.npz", dim=4)


def test_extract_refuses_a_whitening_of_another_size(varied_folder, tmp_path):
    path = save_whitening(tmp_path / "w.npz", fit_whitening(_correlated(100, 32), 4))
    with pytest.raises(ConfigError, match="whitens 32-d embeddings"):
        extract(varied_folder, tmp_path / "out", whiten=str(path), **FAST_MODELS)
    assert not (tmp_path / "out" / "_manifest.json").exists()


# ---------------------------------------------------------------- multi-view averaging

def test_flip_views_average_an_image_and_its_mirror(varied_folder):
    base = create_embedder("test-tiny")
    flipped = with_views(base, flip=True)
    assert with_views(base) is base and flipped.name == "test-tiny+flip" and flipped.dim == base.dim
    image = np.asarray(Image.open(varied_folder / "img00.png").convert("RGB"))
    mirror = np.ascontiguousarray(image[:, ::-1])
    a, b = flipped([image, mirror])
    np.testing.assert_allclose(a, b, atol=1e-6)  # mirror-invariant by construction
    both = base([image, mirror])
    expected = both.sum(axis=0) / np.linalg.norm(both.sum(axis=0))
    np.testing.assert_allclose(a, expected, atol=1e-6)
    assert flipped([]).shape == (0, base.dim)


def test_scaled_views_need_a_free_input_size():
    with pytest.raises(ConfigError, match="fixed input size"):
        MultiViewEmbedder(create_embedder("test-tiny"), scales=(1.0, 0.71))
    with pytest.raises(ConfigError, match="scales"):
        PipelineConfig.from_options(scales=(0.0,), **FAST_MODELS)


def test_extract_with_flip_records_the_views(varied_folder, tmp_path):
    out = tmp_path / "flip"
    extract(varied_folder, out, flip=True, limit=4, **FAST_MODELS)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["models"]["embedder"] == "test-tiny+flip"
    assert manifest["config"]["embed"]["flip"] is True


# ---------------------------------------------------------------- GeM pooling

def test_gem_pool_is_the_average_at_p1_and_nears_the_max_for_large_p():
    torch = pytest.importorskip("torch")
    from imgfeat.models.mobilenet_v2 import gem_pool

    x = torch.rand(2, 5, 7, 7) * 6
    torch.testing.assert_close(gem_pool(x, 1.0), x.mean(dim=(2, 3), keepdim=True), atol=1e-5, rtol=1e-5)
    big = gem_pool(x, 20.0).flatten()  # >= max * 49 ** (-1/20) = 0.82 max
    top = x.amax(dim=(2, 3)).flatten()
    assert bool((big <= top + 1e-4).all()) and bool((big > 0.8 * top).all())
    p3 = gem_pool(x, 3.0)
    assert bool((p3 >= x.mean(dim=(2, 3), keepdim=True) - 1e-5).all())  # power mean inequality


@pytest.mark.slow
def test_gem_onnx_export_matches_torch_at_two_sizes(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from imgfeat.models import mobilenet_v2 as mnv2

    path = mnv2.export_onnx(tmp_path / "gem.onnx", gem_p=3.0, dynamic_size=True)
    model = mnv2.load()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for size in (224, 160):
        images = rng.normal(size=(2, 3, size, size)).astype(np.float32)
        (got,) = session.run(None, {"images": images})
        with torch.no_grad():
            expected = model.forward_features(torch.from_numpy(images), 3.0).numpy()
        assert got.shape == (2, 1280)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            average = model.forward_features(torch.from_numpy(images)).numpy()
        assert np.abs(got - average).max() > 1e-2  # it is not the average pooling

    # the free input size serves the multi-scale views: 224 and 160 px, averaged
    from imgfeat.models.embedders import OnnxEmbedder
    from imgfeat.models.preprocess import InputSpec, to_tensor

    embedder = OnnxEmbedder(path, spec=InputSpec(size=(224, 224)), runtime="onnxruntime")
    views = MultiViewEmbedder(embedder, scales=(1.0, 0.71))
    assert views.specs[1].size == (160, 160) and views.name.endswith("+s1,0.71")
    crops = [rng.integers(0, 255, (180, 240, 3), dtype=np.uint8) for _ in range(2)]
    small = embedder.model.run(to_tensor(crops, views.specs[1]))[0]
    expected = embedder(crops) + small / np.linalg.norm(small, axis=1, keepdims=True)
    np.testing.assert_allclose(views(crops), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


# ---------------------------------------------------------------- the benchmark's new options

def test_eval_scores_whitened_and_flipped_vectors(tmp_path):
    from conftest import PHOTOS

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("dog.jpg", "horses.jpg"):
        (photos / name).write_bytes((PHOTOS / name).read_bytes())
    rng = np.random.default_rng(0)
    for i in range(2):
        field = rng.random((6, 8, 3)) * 255
        Image.fromarray(field.astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC).save(
            photos / f"field{i}.png")
    out = tmp_path / "results.json"
    assert main(["eval", "neardup", "--photos", str(photos), "--detector", "test-blob", "--embedder", "test-tiny",
                 "--bits", "64", "--methods", "rproj", "--perceptual", "", "--distractors", "1",
                 "--train-crops", "4", "--views", "3", "--embed-flip", "--whiten", "8,16,64",
                 "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["models"]["embedder"] == "test-tiny+flip"
    assert report["settings"]["whiten_dims"] == [8, 16, 64] and report["settings"]["flip"] is True
    # 2 training photos x 4 crops x (1 + 3 views) = 32 vectors per fold: 64 dims cannot be fitted
    assert {"pcaw-64", "pca-64"} <= set(report["skipped"])
    for key in ("pcaw-8", "pca-8", "pcaw-16", "pca-16"):
        result = report["results"][key]
        assert result["bits"] == 32 * int(key.split("-")[1])
        assert 0.0 < result["map"] <= 1.0 and result["map"] >= result["top1"] - 1e-9


def test_cli_records_the_whitening_file_as_an_absolute_path(varied_folder, tmp_path, monkeypatch):
    whiten_file = save_whitening(tmp_path / "w.npz", fit_whitening(_correlated(100, 64), 4))
    monkeypatch.chdir(tmp_path)
    assert main(["extract", str(varied_folder), "-o", "out", "--detector", "test-blob", "--embedder", "test-tiny",
                 "--whiten", "w.npz", "--limit", "3", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["config"]["embed"]["whiten"] == str(whiten_file.resolve())
    assert open_features(tmp_path / "out").dim == 4
