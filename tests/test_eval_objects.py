"""Scoring images by their sets of objects (object_sets) and `eval neardup --vectors ...,objects`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import blob_image
from imgfeat import cli
from imgfeat.errors import ConfigError
from imgfeat.evaluate import EvalSettings
from imgfeat.metrics import cosine_distances, hamming_distances
from imgfeat.models.hashing import RandomProjectionHasher
from imgfeat.models.testing import BlobDetector
from imgfeat.neardup_data import PipelineEmbedder
from imgfeat.object_sets import ObjectSets, object_set_distances, objects_per_image, prefix_rows, set_distances


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, np.float32)
    return v / np.linalg.norm(v)


def random_sets(rng: np.random.Generator, counts: list[int], dim: int = 16) -> ObjectSets:
    vectors = rng.standard_normal((sum(counts), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ObjectSets(vectors, np.asarray(counts), ["thing"] * sum(counts))


def test_prefix_rows_keeps_each_images_first_objects():
    rows, counts = prefix_rows(np.array([3, 1, 2]), 2)
    assert rows.tolist() == [0, 1, 3, 4, 5] and counts.tolist() == [2, 1, 2]
    rows, counts = prefix_rows(np.array([3, 1, 2]), 1)
    assert rows.tolist() == [0, 3, 4] and counts.tolist() == [1, 1, 1]
    rows, _ = prefix_rows(np.array([3, 1, 2]), 9)
    assert rows.tolist() == list(range(6))
    with pytest.raises(ConfigError, match="at least 1"):
        prefix_rows(np.array([1]), 0)


def test_max_finds_any_shared_object_and_chamfer_needs_all_of_them():
    # the query holds a dog and a bicycle; item 0 holds only the very same dog, item 1 a slightly
    # different dog and bicycle (another shot of both)
    dog, bicycle = unit(1, 0, 0), unit(0, 1, 0)
    query = ObjectSets(np.stack([dog, bicycle]), np.array([2]), ["dog", "bicycle"])
    items = ObjectSets(np.stack([dog, unit(1, 0.2, 0.2), unit(0.2, 1, 0.2)]), np.array([1, 2]),
                       ["dog", "dog", "bicycle"])
    distances = object_set_distances(query, items, k=2)
    near = 1 - float(unit(1, 0.2, 0.2) @ dog)  # item 1's closest pair, for either object
    np.testing.assert_allclose(distances["max/float"][0], [[0.0, near]], atol=1e-6)
    np.testing.assert_allclose(distances["chamfer/float"][0], [[(0.0 + 1.0) / 2, near]], atol=1e-6)
    assert distances["max/float"][0].argmin() == 0  # any shared object: the lone dog wins
    assert distances["chamfer/float"][0].argmin() == 1  # all of the query's objects: both win
    assert distances["max/float"][1] == 32 * 3
    # with one object each (K' = 1) the two reductions are the plain main-object distance
    first = object_set_distances(query, items, k=1)
    np.testing.assert_allclose(first["max/float"][0], cosine_distances(dog[None], np.stack([dog, unit(1, 0.2, 0.2)])),
                               atol=1e-6)
    np.testing.assert_array_equal(first["max/float"][0], first["chamfer/float"][0])


def test_set_distances_match_a_loop_over_pairs():
    rng = np.random.default_rng(3)
    query_counts, item_counts = np.array([1, 3, 2, 4]), np.array([2, 1, 5])
    pairs = rng.random((query_counts.sum(), item_counts.sum()))
    qo = np.r_[0, np.cumsum(query_counts)]
    io = np.r_[0, np.cumsum(item_counts)]
    expected_max = np.zeros((4, 3))
    expected_chamfer = np.zeros((4, 3))
    for q in range(4):
        for i in range(3):
            block = pairs[qo[q]:qo[q + 1], io[i]:io[i + 1]]
            expected_max[q, i] = block.min()
            expected_chamfer[q, i] = block.min(axis=1).mean()
    np.testing.assert_allclose(set_distances(pairs, query_counts, item_counts, "max"), expected_max)
    np.testing.assert_allclose(set_distances(pairs, query_counts, item_counts, "chamfer"), expected_chamfer)
    assert not np.allclose(expected_max, expected_chamfer)


def test_one_object_each_equals_the_object_vector_floats_and_codes():
    rng = np.random.default_rng(0)
    queries, items = random_sets(rng, [3, 1, 2, 2]), random_sets(rng, [1, 4, 2])
    distances = object_set_distances(queries, items, k=1, code_bits=(64,), seed=5)
    plain = cosine_distances(queries.first(), items.first())
    np.testing.assert_allclose(distances["max/float"][0], plain, atol=1e-6)
    np.testing.assert_allclose(distances["chamfer/float"][0], plain, atol=1e-6)
    hasher = RandomProjectionHasher(16, 64, 5)
    np.testing.assert_array_equal(distances["max/rproj-64"][0],
                                  hamming_distances(hasher(queries.first()), hasher(items.first())))
    # more objects can only bring a pair closer under "max"
    more = object_set_distances(queries, items, k=4)["max/float"][0]
    assert (more <= plain + 1e-6).all() and (more < plain - 1e-6).any()


def test_set_distances_reject_bad_input():
    with pytest.raises(ConfigError, match="unknown reduction"):
        set_distances(np.zeros((1, 1)), [1], [1], "mean")
    with pytest.raises(ConfigError, match="at least one object"):
        set_distances(np.zeros((1, 1)), [1, 0], [1], "max")
    with pytest.raises(ConfigError, match="counts sum"):
        set_distances(np.zeros((2, 1)), [1], [1], "max")


def test_objects_per_image_counts_prefixes_and_empty_images():
    sets = ObjectSets(np.zeros((6, 2), np.float32), np.array([3, 1, 2]), ["a", "b", "c", None, "d", "e"])
    counts = objects_per_image(sets, 3)
    assert counts["mean_objects"] == {"1": 1.0, "2": 5 / 3, "3": 2.0}
    assert counts["nothing_detected"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- through the pipeline

@pytest.fixture
def two_objects(monkeypatch):
    """test-blob finds, beside its blob, a second object: the image's left half (IoU with the
    blob below 0.7, so select_objects keeps both), at a lower score."""
    original = BlobDetector.__call__

    def call(self, images):
        results = original(self, images)
        out = []
        for image, found in zip(images, results):
            if len(found):
                half = [0, 0, image.shape[1] / 2, image.shape[0], 0.8, 0]
                found = np.concatenate([found, np.asarray([half], np.float32)])
            out.append(found)
        return out

    monkeypatch.setattr(BlobDetector, "__call__", call)


def test_pipeline_embedder_reads_the_objects_column(tmp_path, two_objects):
    blob = np.asarray(Image.open(blob_image(tmp_path / "blob.png")).convert("RGB"))
    plain = np.full((120, 160, 3), 90, np.uint8)  # test-blob finds nothing: one whole-image entry
    encoded = PipelineEmbedder("test-blob", "test-tiny", objects=3).encode([blob, plain, blob])
    sets = encoded.objects
    assert sets.counts.tolist() == [2, 1, 2] and sets.labels == ["blob", "blob", None, "blob", "blob"]
    np.testing.assert_array_equal(sets.first(), encoded.object)  # the main object comes first
    np.testing.assert_allclose(np.linalg.norm(sets.vectors, axis=1), 1.0, atol=1e-5)
    assert float(sets.vectors[0] @ sets.vectors[1]) < 0.99  # the second object is another crop
    assert PipelineEmbedder("test-blob", "test-tiny").encode([blob]).objects is None


def test_eval_run_with_object_sets(tmp_path, two_objects):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 160, 40), (40, 40, 220)]):
        blob_image(photos / f"blob{i}.png", offset=20 * i, colour=colour)
    for i in range(3):  # plain scenery, where test-blob finds nothing: the pastes' backgrounds
        Image.fromarray(np.full((220, 330, 3), (90 + 40 * i, 120, 150 - 30 * i), np.uint8)).save(
            photos / f"plain{i}.png")
    out = tmp_path / "results.json"
    code = cli.main(["eval", "neardup", "--photos", str(photos), "--detector", "test-blob",
                     "--embedder", "test-tiny", "--bits", "32", "--methods", "rproj", "--perceptual", "",
                     "--distractors", "1", "--vectors", "object,image,objects", "--objects", "2",
                     "--same-object", "3", "--same-object-pastes", "2", "--json-out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    results = report["results"]
    for k in (1, 2):
        assert {f"objects{k}-max/float", f"objects{k}-chamfer/float", f"objects{k}-max/rproj-32"} <= set(results)
    # K' = 1 is the main object alone: exactly the object vector's scores
    for key in ("objects1-max/float", "objects1-chamfer/float"):
        for metric in ("top1", "map", "best_f1", "top1_by_transform"):
            assert results[key][metric] == results["float"][metric], (key, metric)
    assert results["objects1-max/rproj-32"]["map"] == results["rproj-32"]["map"]
    assert results["objects2-max/float"]["bits"] == 32 * 64 and "misses" in results["objects2-max/float"]
    counts = report["objects"]
    assert counts["k"] == 2
    for side in ("queries", "database"):
        assert counts[side]["mean_objects"]["1"] == 1.0 and counts[side]["mean_objects"]["2"] > 1.0
    assert report["same_object"]["counts"]["objects_per_paste"]["mean_objects"]["1"] == 1.0
    task = report["same_object"]["results"]
    assert {"float", "image/float", "objects2-max/float", "objects2-chamfer/float",
            "objects2-max/rproj-32"} <= set(task)
    assert task["objects1-max/float"] == task["float"]
    names = {t["target"] for t in report["targets"]}
    assert "objects2-max/float (the object sets) top-1 >= 0.97" in names
    assert "same-object task: objects2-chamfer/float (object sets) beats whole-image float on map" in names


def test_object_sets_need_a_detector():
    with pytest.raises(ConfigError, match="needs a detector"):
        EvalSettings(detector="none", vectors=("image", "objects"))
    with pytest.raises(ConfigError, match="objects >= 1"):
        EvalSettings(vectors=("objects",), objects=0)
    EvalSettings(detector="none", vectors=("image",), objects=0)  # not asked for: not checked


def test_learned_codes_and_whitening_are_reported_skipped_for_the_object_sets(tmp_path, two_objects):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 160, 40), (40, 40, 220)]):
        blob_image(photos / f"blob{i}.png", offset=20 * i, colour=colour)
    out = tmp_path / "results.json"
    code = cli.main(["eval", "neardup", "--photos", str(photos), "--detector", "test-blob",
                     "--embedder", "test-tiny", "--bits", "32", "--methods", "rproj,itq", "--perceptual", "",
                     "--whiten", "8", "--distractors", "1", "--vectors", "objects", "--objects", "2",
                     "--json-out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"objects/itq", "objects/pcaw-8"} <= set(report["skipped"])
    assert not any(key.startswith("itq") or "pcaw" in key for key in report["results"])
