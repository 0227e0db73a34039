"""Whole images embedded at their own aspect ratio (EmbedConfig.image_aspect, issue 13): the
sizes, the default embedder's free input size, what the manifest records, resume and queries
against outputs made before it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import imgfeat
from conftest import FAST_MODELS, SAMPLES
from imgfeat.config import PipelineConfig
from imgfeat.errors import ConfigError, OutputError
from imgfeat.models import create_embedder
from imgfeat.models.embedders import MultiViewEmbedder, takes_any_size, whole_image_embedder
from imgfeat.models.preprocess import aspect_size, l2_normalize, to_tensor
from imgfeat.retrieval.search import query_config
from imgfeat.runners.base import config_fingerprint
from imgfeat.stages import Features, ImageBatch


def test_aspect_size_snaps_the_ratio_to_four_steps_on_a_32_pixel_grid():
    assert aspect_size(300, 400, 224) == (224, 288)   # 4:3 landscape: 1.33 -> 9/7
    assert aspect_size(400, 300, 224) == (288, 224)   # portrait: the same, turned
    assert aspect_size(500, 500, 224) == (224, 224)
    assert aspect_size(480, 500, 224) == (224, 224)   # nearly square: square
    assert aspect_size(1080, 1920, 224) == (224, 352)  # 16:9 -> 11/7
    assert aspect_size(100, 1000, 224) == (224, 448)  # a panorama is cut to 2:1
    assert aspect_size(1000, 100, 224) == (448, 224)
    assert aspect_size(300, 400, 160) == (160, 192)   # another scale's short side
    assert aspect_size(3, 4000, 10) == (32, 64)       # never under one 32-pixel cell
    shapes = {aspect_size(h, w, 224) for h in range(100, 2000, 37) for w in range(100, 2000, 41)}
    assert len(shapes) == 7  # square, and three landscape and three portrait steps


def test_a_fixed_size_embedder_cannot_keep_the_aspect_and_whole_images_are_then_stretched():
    tiny = create_embedder("test-tiny")
    assert not takes_any_size(tiny)
    with pytest.raises(ConfigError, match="fixed input size"):
        MultiViewEmbedder(tiny, keep_aspect=True)
    assert whole_image_embedder(tiny) is None
    features = Features(PipelineConfig.from_options(**FAST_MODELS))
    assert features.image_embedder is None
    assert features.digests["preprocess"] == "halves-v2"  # what the manifest will say: stretched


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    with Image.open(SAMPLES / "horses.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    top = np.random.default_rng(seed).integers(0, max(1, photo.shape[0] - height))
    return np.ascontiguousarray(photo[top:top + height, :width])


@pytest.fixture(scope="module")
def default_embedder():
    return create_embedder("mobilenet-v2")


def test_the_default_embedder_takes_any_size_and_embeds_whole_images_at_their_aspect(default_embedder):
    assert takes_any_size(default_embedder)
    wide, tall, square = _photo(300, 400), _photo(400, 300)[:, :300], _photo(320, 320, 1)
    whole = whole_image_embedder(default_embedder)
    vectors = whole([wide, tall, square])  # three sizes in one call, returned in order
    run = default_embedder.model.run
    for image, vector, size in [(wide, vectors[0], (224, 288)), (tall, vectors[1], (288, 224)),
                                (square, vectors[2], (224, 224))]:
        expected = l2_normalize(run(to_tensor([image], type(default_embedder.spec)(size=size)))[0])[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    # a square input is the crop embedder's own preprocessing; a stretched 4:3 image is not
    np.testing.assert_allclose(vectors[2], default_embedder([square])[0], atol=1e-5)
    assert float(vectors[0] @ default_embedder([wide])[0]) < 0.999


def test_features_record_the_aspect_and_use_it_where_the_whole_image_is_the_crop(default_embedder, tmp_path):
    config = PipelineConfig.from_options(detector="none", workers=0, progress=False)
    features = Features(config)
    assert features.digests["preprocess"] == "halves-v2+image-aspect"
    wide = _photo(300, 400)
    table = features(ImageBatch.of_images([wide]))
    embedding = np.asarray(table.column("embedding")[0].as_py(), np.float32)
    np.testing.assert_allclose(embedding, np.asarray(table.column("image_embedding")[0].as_py()), atol=1e-6)
    np.testing.assert_allclose(embedding, whole_image_embedder(default_embedder)([wide])[0], atol=1e-5)
    square = Features(PipelineConfig.from_options(detector="none", image_aspect=False, workers=0, progress=False))
    assert square.digests["preprocess"] == "halves-v2"
    stretched = np.asarray(square(ImageBatch.of_images([wide])).column("embedding")[0].as_py(), np.float32)
    np.testing.assert_allclose(stretched, default_embedder([wide])[0], atol=1e-5)


def test_fingerprint_and_queries_of_outputs_made_before_the_aspect_setting():
    square = PipelineConfig.from_options(image_aspect=False)
    before = json.loads(json.dumps(square.to_dict()))
    del before["embed"]["image_aspect"]  # what a manifest written before the setting holds
    assert query_config(before).embed.image_aspect is False  # queries are stretched as its rows were
    assert query_config(square.to_dict()).embed.image_aspect is False
    assert query_config(PipelineConfig().to_dict()).embed.image_aspect is True
    assert config_fingerprint(square) != config_fingerprint(PipelineConfig())


def test_resuming_a_square_output_with_the_aspect_kept_is_refused(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("dog.jpg", "eagle.jpg", "coffee_cup.jpg"):
        (photos / name).write_bytes((SAMPLES / name).read_bytes())
    out = tmp_path / "out"
    options = dict(detector="none", workers=0, progress=False, shard_size=1)
    imgfeat.extract(photos, out, image_aspect=False, limit=2, **options)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model_digests"]["preprocess"] == "halves-v2"
    with pytest.raises(OutputError):
        imgfeat.extract(photos, out, **options)  # the same output with whole images at their aspect
    report = imgfeat.extract(photos, out, image_aspect=False, **options)  # the square setting resumes
    assert (report.processed, report.skipped) == (1, 2)


def test_image_gray_averages_the_grayscale_rendition_of_whole_images_only():
    from imgfeat.models.embedders import grayscale

    config = PipelineConfig.from_options(image_gray=True, **FAST_MODELS)
    features = Features(config)
    assert features.digests["preprocess"] == "halves-v2+image-gray"  # the tiny model: gray, no aspect
    image = np.full((120, 160, 3), 255, np.uint8)
    image[30:90, 40:120] = (200, 30, 30)
    table = features(ImageBatch.of_images([image]))
    tiny = create_embedder("test-tiny")
    expected = l2_normalize(tiny([image]) + tiny([grayscale(image)]))[0]
    np.testing.assert_allclose(np.asarray(table.column("image_embedding")[0].as_py()), expected, atol=1e-5)
    # the object crop is embedded as without it: colour matters for "the same product elsewhere"
    assert table.column("crop")[0].as_py() == "object"
    plain = Features(PipelineConfig.from_options(**FAST_MODELS))(ImageBatch.of_images([image]))
    np.testing.assert_allclose(np.asarray(table.column("embedding")[0].as_py()),
                               np.asarray(plain.column("embedding")[0].as_py()), atol=1e-6)
    assert not np.allclose(np.asarray(plain.column("image_embedding")[0].as_py()), expected, atol=1e-3)
    assert query_config(config.to_dict()).embed.image_gray is True
    assert config_fingerprint(config) != config_fingerprint(PipelineConfig.from_options(**FAST_MODELS))
