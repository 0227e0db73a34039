"""Near-duplicate groups on planted copies of real photos (tiny test models), reviews, report, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("faiss")

import imgfeat  # noqa: E402
from imgfeat.cli import main  # noqa: E402
from imgfeat.dataset import open_features  # noqa: E402
from imgfeat.retrieval.dedup import USING, _components, _union_find, find_duplicates  # noqa: E402
from imgfeat.retrieval.reviews import load_reviews, save_review  # noqa: E402
from imgfeat.errors import ConfigError  # noqa: E402
from imgfeat.retrieval.index import FeatureIndex  # noqa: E402
from imgfeat.retrieval.report import write_report  # noqa: E402

from conftest import FAST_MODELS, SAMPLES  # noqa: E402

DISTINCT = ("astronaut.jpg", "coffee_cup.jpg", "chelsea_cat.png", "colorful_cups.jpg", "grace_hopper.jpg",
            "cameraman_gray.png", "kite_sky.jpg")
PLANTED = {("dog.jpg", "dog_copy.jpg"), ("horses.jpg", "horses_small.jpg"), ("eagle.jpg", "eagle_q30.jpg")}
THRESHOLD = 0.95


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dedup")
    photos = root / "photos"
    photos.mkdir()
    for name in DISTINCT + ("dog.jpg", "horses.jpg", "eagle.jpg"):
        shutil.copy(SAMPLES / name, photos / name)
    shutil.copy(SAMPLES / "dog.jpg", photos / "dog_copy.jpg")  # exact copy
    with Image.open(SAMPLES / "horses.jpg") as image:  # half size, JPEG quality 40
        image.resize((image.width // 2, image.height // 2)).save(photos / "horses_small.jpg", quality=40)
    with Image.open(SAMPLES / "eagle.jpg") as image:  # recompressed at quality 30
        image.save(photos / "eagle_q30.jpg", quality=30)
    imgfeat.extract(photos, root / "features", **{**FAST_MODELS, "detector": "none"})
    return root / "features"


def _pairs(groups: pd.DataFrame) -> set[tuple[str, ...]]:
    return {tuple(sorted(Path(p).name for p in members["path"])) for _, members in groups.groupby("group")}


def test_planted_duplicates_are_grouped_and_distinct_photos_are_not(features):
    groups = find_duplicates(features, THRESHOLD)
    assert _pairs(groups) == PLANTED
    assert list(groups.columns)[:5] == ["group", "id", "path", "is_representative", "score"]
    assert groups.groupby("group")["is_representative"].sum().tolist() == [1, 1, 1]
    reps = {Path(p).name for p in groups.loc[groups["is_representative"], "path"]}
    assert "horses.jpg" in reps  # the largest image of its group
    assert (groups["score"] > THRESHOLD).all()
    assert groups.loc[groups["is_representative"], "score"].tolist() == pytest.approx([1.0] * 3)
    stats = groups.attrs["stats"]
    assert stats["vectors"] == 13 and stats["groups"] == 3 and stats["kind"] == "flat"

    first = find_duplicates(features, THRESHOLD, representative="first")
    assert "horses.jpg" in {Path(p).name for p in first.loc[first["is_representative"], "path"]}  # sorted first
    assert _pairs(find_duplicates(features, 0.999999)) == {("dog.jpg", "dog_copy.jpg")}


def test_binary_codes_group_the_planted_copies_too(features, tmp_path, capsys):
    """--using code: the 256-bit codes at the threshold's Hamming match (25 bits at 0.95) find the
    same planted pairs; scores are 1 - h / bits to the representative."""
    groups = find_duplicates(features, THRESHOLD, using="code")
    assert _pairs(groups) == PLANTED
    stats = groups.attrs["stats"]
    assert (stats["using"], stats["bits"], stats["max_hamming"], stats["vectors"]) == ("code", 256, 25, 13)
    reps = {Path(p).name for p in groups.loc[groups["is_representative"], "path"]}
    assert "horses.jpg" in reps and (groups["score"] >= 1 - 25 / 256).all()
    assert groups.loc[groups["path"].str.contains("dog"), "score"].tolist() == [1.0, 1.0]  # an exact copy
    out = tmp_path / "groups.parquet"
    assert main(["dedup", str(features), "-o", str(out), "--using", "code", "--threshold", str(THRESHOLD)]) == 0
    assert "3 groups (6 images) among 13 at Hamming distance <= 25 of 256 bits" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out), groups)
    with pytest.raises(ConfigError, match="not an index"):
        find_duplicates(FeatureIndex.build(features), THRESHOLD, using="code")


@pytest.fixture(scope="module")
def whitened(features, tmp_path_factory) -> Path:
    """The same photos extracted with --whiten: PCA-whitened vectors, 64 -> 8 floats."""
    root = tmp_path_factory.mktemp("whitened")
    assert main(["train-whiten", str(features), "-o", str(root / "w.npz"), "--dim", "8"]) == 0
    imgfeat.extract(features.parent / "photos", root / "features", whiten=str(root / "w.npz"),
                    **{**FAST_MODELS, "detector": "none"})
    return root / "features"


def test_whitened_features_are_grouped_by_vector_and_by_code(whitened):
    assert open_features(whitened).dim == 8
    for using in USING:
        assert _pairs(find_duplicates(whitened, THRESHOLD, using=using)) == PLANTED


@pytest.mark.ray
def test_ray_gives_the_local_groups_of_photos_by_vector_code_and_whitened(features, whitened, ray_local):
    """The distributed engines on real (tiny-model) features: Spark is checked against the same
    local reference on synthetic sets (test_dedup_distributed.py, test_dedup_codes.py)."""
    from imgfeat.retrieval.dedup_ray import find_duplicates_ray

    for source in (features, whitened):
        for using in USING:
            local = find_duplicates(source, THRESHOLD, using=using)
            distributed = find_duplicates_ray(source, THRESHOLD, using=using, nlist=2, probes=2)
            assert _pairs(distributed) == PLANTED
            pd.testing.assert_frame_equal(distributed.drop(columns=["score"]), local.drop(columns=["score"]))
            np.testing.assert_allclose(distributed["score"], local["score"], atol=1e-5)


def test_dedup_over_a_saved_hnsw_index_gives_the_same_groups(features, tmp_path):
    index = FeatureIndex.build(features, kind="hnsw")
    index.save(tmp_path / "ix")
    assert _pairs(find_duplicates(tmp_path / "ix", THRESHOLD)) == PLANTED
    assert _pairs(find_duplicates(index, THRESHOLD, max_neighbors=1)) == PLANTED


def test_reviews_keep_not_duplicates_apart(features, tmp_path):
    groups = find_duplicates(features, THRESHOLD)
    dog_ids = groups[groups["path"].str.contains("dog")]["id"].tolist()
    reviews = tmp_path / "out" / "reviews.jsonl"
    record = save_review(reviews, list(reversed(dog_ids)))
    assert record["ids"] == sorted(dog_ids) and record["verdict"] == "not-duplicate" and record["at"].endswith("Z")
    with open(reviews, "a") as fh:
        fh.write('{"ids": ["half-writ')  # a write cut short: ignored
    assert load_reviews(reviews) == [record]
    again = find_duplicates(features, THRESHOLD, reviews=reviews)
    assert _pairs(again) == PLANTED - {("dog.jpg", "dog_copy.jpg")}
    assert again.attrs["stats"]["pairs_dropped_by_reviews"] >= 1
    save_review(reviews.with_name("other.jsonl"), dog_ids, verdict="duplicate")  # recorded, drops nothing
    assert _pairs(find_duplicates(features, THRESHOLD, reviews=reviews.with_name("other.jsonl"))) == PLANTED
    with pytest.raises(ConfigError, match="two distinct ids"):
        save_review(reviews, [dog_ids[0], dog_ids[0]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ids": ["a", "b"], "verdict": "not-duplicate"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_reviews(bad)


def test_html_report_has_an_img_per_member(features, tmp_path):
    groups = find_duplicates(features, THRESHOLD)
    out = tmp_path / "report.html"
    assert write_report(groups, out) == 3
    text = out.read_text()
    assert text.count("<img src='data:image/jpeg;base64,") == len(groups) == 6
    assert "Showing the" not in text and "horses_small.jpg" in text
    assert write_report(groups, out, max_groups=1) == 1
    text = out.read_text()
    assert text.count("<img ") == 2 and "Showing the 1 largest of 3 groups" in text


def test_union_find_matches_scipy():
    rng = np.random.default_rng(0)
    lo, hi = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    a, b = _components(300, lo, hi), _union_find(300, lo, hi)
    # same partition: a bijection between component labels
    assert len(set(zip(a, b))) == len(set(a)) == len(set(b))


def test_cli_dedup_with_default_reviews_file(features, tmp_path, capsys):
    out = tmp_path / "run" / "groups.parquet"
    html = tmp_path / "run" / "report.html"
    assert main(["dedup", str(features), "--threshold", str(THRESHOLD), "-o", str(out), "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    assert "3 groups (6 images) among 13" in printed and str(out) in printed
    groups = pd.read_parquet(out)
    assert {"group", "id", "path", "is_representative", "score"} <= set(groups.columns) and len(groups) == 6
    assert html.read_text().count("<img ") == 6
    eagle = groups[groups["path"].str.contains("eagle")]["id"].tolist()
    (tmp_path / "run" / "reviews.jsonl").write_text(json.dumps({"ids": sorted(eagle), "verdict": "not-duplicate",
                                                               "at": "2024-01-01T00:00:00Z"}) + "\n")
    assert main(["dedup", str(features), "--threshold", str(THRESHOLD), "-o", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["groups"] == 2 and stats["pairs_dropped_by_reviews"] >= 1
    assert main(["dedup", str(features), "--threshold", "1.5", "-o", str(out)]) == 1
    assert "threshold" in capsys.readouterr().err


def test_cli_dedup_groups_across_several_feature_folders(features, tmp_path, capsys):
    """A copy extracted into a second output is grouped with its original in the first."""
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(SAMPLES / "kite_sky.jpg", more / "kite_again.jpg")
    imgfeat.extract(more, tmp_path / "features2", **{**FAST_MODELS, "detector": "none"})
    out = tmp_path / "groups.parquet"
    assert main(["dedup", str(features), str(tmp_path / "features2"), "--threshold", str(THRESHOLD),
                 "-o", str(out)]) == 0
    assert "4 groups (8 images) among 14" in capsys.readouterr().out
    assert ("kite_again.jpg", "kite_sky.jpg") in _pairs(pd.read_parquet(out))
