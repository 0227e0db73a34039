"""The near-duplicate benchmark: metric functions, transforms, a small run with test models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS, blob_image
from imgfeat import augment, cli
from imgfeat.errors import ConfigError, SourceError
from imgfeat.evaluate import EvalSettings
from imgfeat.metrics import (
    average_precision, best_f1, cosine_distances, hamming_distances, mean_average_precision, precision_recall,
    rank_order, top1_accuracy,
)
from imgfeat.neardup_data import build_benchmark, build_same_object, distractor_windows, load_photos, load_variants

# three queries over four database items; query 0 finds its item first, query 1 third,
# query 2 (two relevant items) at ranks 1 and 3
DISTANCES = np.array([[0.1, 0.5, 0.7, 0.9],
                      [0.2, 0.3, 0.4, 0.1],
                      [0.6, 0.05, 0.9, 0.3]])
RELEVANT = np.array([[1, 0, 0, 0],
                     [0, 0, 1, 0],
                     [0, 1, 1, 0]], dtype=bool)


def test_average_precision_of_hand_made_rankings():
    assert average_precision([1, 0, 0]) == 1.0
    assert average_precision([0, 0, 1]) == pytest.approx(1 / 3)
    assert average_precision([1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 0, 0]) == 0.0


def test_top1_and_map_from_distances():
    assert top1_accuracy(DISTANCES, RELEVANT) == pytest.approx(2 / 3)
    # query 1: order 3, 0, 1, 2 -> its item is 4th
    expected = (1.0 + 1 / 4 + (1 + 2 / 4) / 2) / 3
    assert mean_average_precision(DISTANCES, RELEVANT) == pytest.approx(expected)


def test_ties_are_broken_at_random_not_in_favour_of_the_first_item():
    distances = np.zeros((400, 2))
    relevant = np.zeros((400, 2), bool)
    relevant[:, 0] = True  # a stable sort would always rank item 0 first
    assert 0.35 < top1_accuracy(distances, relevant, seed=1) < 0.65
    np.testing.assert_array_equal(rank_order(distances, 5), rank_order(distances, 5))


def test_precision_recall_and_best_f1():
    pr = precision_recall(DISTANCES, RELEVANT, threshold=0.3)
    # pairs within 0.3: (0,0) yes, (1,0) no, (1,1) no, (1,3) no, (2,1) yes, (2,3) no -> 2 of 6
    assert pr["pairs_called"] == 6 and pr["precision"] == pytest.approx(2 / 6)
    assert pr["recall"] == pytest.approx(2 / 4)
    assert precision_recall(DISTANCES, RELEVANT, threshold=0.0)["precision"] == 1.0
    best = best_f1(DISTANCES, RELEVANT)
    assert best["threshold"] == pytest.approx(0.1)  # calls (2,1), (0,0), (1,3): 2 right of 3
    assert best["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_distances():
    codes = np.packbits(np.array([[1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]], bool), axis=1)
    np.testing.assert_allclose(hamming_distances(codes, codes), [[0, 0.5], [0.5, 0]])
    v = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(cosine_distances(v, v), [[0, 1], [1, 0]])


def test_transforms_keep_the_photo_recognisable_and_differ():
    image = Image.open(PHOTOS / "dog.jpg").convert("RGB")
    rng = np.random.default_rng(0)
    for name in augment.TRANSFORMS:
        out = augment.apply(name, image, rng)
        assert out.mode == "RGB" and min(out.size) >= 8
        assert not np.array_equal(augment.to_array(out.resize(image.size)), augment.to_array(image)), name
    width, height = augment.crop_fraction(image, 0.8).size
    assert (width, height) == (round(image.size[0] * 0.8), round(image.size[1] * 0.8))
    with pytest.raises(KeyError, match="valid"):
        augment.apply("sepia", image, rng)


def test_distractors_avoid_the_main_object():
    rng = np.random.default_rng(0)
    box = np.array([0, 0, 50, 50], float)
    for left, top, right, bottom in distractor_windows(200, 200, 5, rng, avoid=box):
        assert left >= 50 or top >= 50  # outside the object's corner
        assert 70 <= right - left <= 110


def test_benchmark_layout():
    photos = [np.full((60, 80, 3), c, np.uint8) for c in (10, 120, 250)]
    bench = build_benchmark(["a", "b", "c"], photos, distractors_per_photo=2)
    assert len(bench.database) == 9 and len(bench.queries) == 3 * (len(augment.TRANSFORMS) + 1)
    assert bench.relevant.sum() == len(bench.queries)
    assert bench.relevant[bench.query_transforms.index("jpeg"), 0]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown code methods"):
        EvalSettings(methods=("lsh",))
    with pytest.raises(ConfigError, match="folds"):
        EvalSettings(folds=1)


def test_small_eval_run_with_test_models(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("dog.jpg", "horses.jpg"):
        (photos / name).write_bytes((PHOTOS / name).read_bytes())
    rng = np.random.default_rng(0)
    for i in range(2):  # two more real-looking pictures: smooth random colour fields
        field = rng.random((6, 8, 3)) * 255
        Image.fromarray(field.astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC).save(
            photos / f"field{i}.png")
    out = tmp_path / "results.json"
    code = cli.main(["eval", "neardup", "--photos", str(photos), "--detector", "test-blob",
                     "--embedder", "test-tiny", "--bits", "8,128", "--distractors", "1",
                     "--train-crops", "3", "--views", "2", "--epochs", "3", "--json-out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["counts"] == {"photos": 4, "database": 8, "distractors": 4, "queries": 36,
                                "transforms": list(augment.TRANSFORMS) + ["combined"]}
    expected = {"float", "phash", "dhash", "whash", "ahash", "rproj-8", "rproj-128", "itq-8",
                "deepbit-8", "deepbit-128"}
    assert set(report["results"]) == expected
    assert "itq-128" in report["skipped"]  # 128 bits > the 64-d test embedder
    for name, result in report["results"].items():
        assert 0.0 <= result["top1"] <= 1.0 and 0.0 < result["map"] <= 1.0, name
        assert result["map"] >= result["top1"] - 1e-9
        assert name in table
    assert report["results"]["float"]["top1"] > 0.25  # better than chance (1/8)
    assert any(t["target"].startswith("float beats") for t in report["targets"])


# ---------------------------------------------------------------- natural variants, same-object task

def test_variants_folder_maps_renditions_to_their_picture(tmp_path):
    photos = tmp_path / "photos"
    (photos / "variants").mkdir(parents=True)
    for i, name in enumerate(("a.jpg", "b.png")):
        Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(photos / name)
    Image.fromarray(np.full((30, 30, 3), 10, np.uint8)).save(photos / "variants" / "a@square.jpg")
    Image.fromarray(np.full((50, 90, 3), 200, np.uint8)).save(photos / "variants" / "wide.png")  # an extra original
    Image.fromarray(np.full((90, 50, 3), 190, np.uint8)).save(photos / "variants" / "wide@tall.png")
    names, images = load_photos(photos)
    assert names == ["a.jpg", "b.png"]  # variants/ is not read as photos
    extras, variants = load_variants(photos, names)
    assert [n for n, _ in extras] == ["wide.png"]
    assert sorted((truth, label) for truth, label, _ in variants) == [("a.jpg", "square"), ("wide.png", "tall")]

    bench = build_benchmark(names, images, distractors_per_photo=1, extras=extras, variants=variants)
    assert len(bench.database) == 2 + 2 + 1 and bench.extras == 1
    assert bench.database_names[-1] == "variants/wide.png"
    rows = [i for i, t in enumerate(bench.query_transforms) if t == "variant"]
    assert len(rows) == 2 and rows == list(range(len(bench.queries) - 2, len(bench.queries)))
    truths = {bench.database_names[bench.query_photo[i]] for i in rows}
    assert truths == {"a.jpg", "variants/wide.png"}
    assert bench.relevant.sum() == len(bench.queries)

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(photos / "variants" / "nosuch@crop.jpg")
    with pytest.raises(SourceError, match="nosuch"):
        load_variants(photos, names)
    assert load_variants(tmp_path, names) == ([], [])  # no variants/ folder: nothing


def test_same_object_pastes_each_object_into_other_backgrounds():
    # photos 0-2 hold one object each (a coloured square, box known); 3-7 are scenery (no detection)
    photos, boxes, scores = [], [], []
    for i in range(8):
        photo = np.full((100, 150, 3), 30 + 20 * i, np.uint8)
        if i < 3:
            photo[20:60, 40:80] = (255, 0, 0) if i == 0 else (0, 255, 0) if i == 1 else (0, 0, 255)
            boxes.append([40, 20, 80, 60])
            scores.append(0.9 - 0.1 * i)
        else:
            boxes.append([0, 0, 150, 100])
            scores.append(np.nan)
        photos.append(photo)
    names = [f"p{i}.jpg" for i in range(8)]
    task = build_same_object(names, photos, np.asarray(boxes, float), np.asarray(scores), objects=2,
                             pastes_per_object=3, seed=1)
    assert task.sources == ["p0.jpg", "p1.jpg"]  # the two most confident objects
    assert len(task.images) == 6 and list(task.object_of) == [0, 0, 0, 1, 1, 1]
    assert set(task.background_of) <= {3, 4, 5, 6, 7}  # scenery only, never a source
    for k in range(2):
        assert len(set(task.background_of[task.object_of == k])) == 3  # three different backgrounds
    for image, k, background in zip(task.images, task.object_of, task.background_of):
        assert image.shape == photos[background].shape
        colour = np.array([(255, 0, 0), (0, 255, 0)][k])
        share = np.all(np.abs(image.astype(int) - colour) < 40, axis=2).mean()
        assert 0.05 < share < 0.5, share  # the object is there, at 35-60% of the short side
    relevant = task.relevant
    assert relevant.sum() == 6 * 2 and not relevant.diagonal().any()
    assert relevant[0, 1] and relevant[0, 2] and not relevant[0, 3]

    with pytest.raises(ConfigError, match="at least 2"):
        build_same_object(names, photos, np.asarray(boxes, float), np.full(8, np.nan))


def test_eval_run_with_both_vectors_variants_and_same_object(tmp_path):
    photos = tmp_path / "photos"
    (photos / "variants").mkdir(parents=True)
    for i, colour in enumerate([(200, 30, 30), (30, 160, 40), (40, 40, 220)]):
        blob_image(photos / f"blob{i}.png", offset=20 * i, colour=colour)
    rng = np.random.default_rng(0)
    for i in range(2):  # smooth random colour fields: test-blob boxes the whole frame (no object)
        field = rng.random((6, 8, 3)) * 255
        Image.fromarray(field.astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC).save(
            photos / f"field{i}.png")
    for i in range(3):  # plain scenery, where test-blob finds nothing: the pastes' backgrounds
        Image.fromarray(np.full((220, 330, 3), (90 + 40 * i, 120, 150 - 30 * i), np.uint8)).save(
            photos / f"plain{i}.png")
    with Image.open(photos / "blob1.png") as image:
        image.crop((0, 0, 240, 200)).save(photos / "variants" / "blob1@crop.png")
    out = tmp_path / "results.json"
    code = cli.main(["eval", "neardup", "--photos", str(photos), "--detector", "test-blob",
                     "--embedder", "test-tiny", "--bits", "8,32", "--methods", "rproj,itq", "--perceptual", "phash",
                     "--distractors", "1", "--train-crops", "2", "--views", "1", "--vectors", "object,image",
                     "--same-object", "3", "--same-object-pastes", "2", "--json-out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["counts"]["variants"] == 1 and report["counts"]["queries"] == 8 * 9 + 1
    assert {"float", "image/float", "rproj-32", "image/rproj-32", "itq-8", "image/itq-8"} <= set(report["results"])
    assert "variant" in report["results"]["image/float"]["top1_by_transform"]
    floats = report["results"]["image/float"]
    # every query whose nearest item is wrong is listed, with what it found instead
    assert len(floats["misses"]) == round((1 - floats["top1"]) * report["counts"]["queries"])
    for miss in floats["misses"]:
        assert miss["found"] != miss["photo"] and miss["edit"] in report["counts"]["transforms"]
    task = report["same_object"]
    assert task["counts"] == {"objects": 3, "pastes": 6, "backgrounds": len(task["backgrounds"])}
    assert set(task["objects"]) == {"blob0.png", "blob1.png", "blob2.png"}
    assert set(task["backgrounds"]) <= {"plain0.png", "plain1.png", "plain2.png"}
    assert {"float", "image/float", "rproj-8", "image/rproj-32"} <= set(task["results"])
    names = {t["target"] for t in report["targets"]}
    assert "whole-image float top1 >= 0.99" in names and "object float top-1 >= 0.97" in names
    assert "same-object task: object float beats whole-image float on map" in names
    # the blob detector crops exactly the pasted square: the object vector finds the other paste,
    # while the whole-image vectors of two pastes on the same plain background look alike
    assert task["results"]["float"]["top1"] == 1.0
    assert task["results"]["float"]["map"] >= task["results"]["image/float"]["map"]
