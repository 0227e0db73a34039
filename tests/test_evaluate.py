"""The near-duplicate benchmark: metric functions, transforms, a small run with test models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS
from imgfeat import augment, cli
from imgfeat.errors import ConfigError
from imgfeat.evaluate import EvalSettings
from imgfeat.metrics import (
    average_precision, best_f1, cosine_distances, hamming_distances, mean_average_precision, precision_recall,
    rank_order, top1_accuracy,
)
from imgfeat.neardup_data import build_benchmark, distractor_windows

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
