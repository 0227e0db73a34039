"""The real default models on real photos with known content (docs/samples.md)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import imgfeat

from conftest import SAMPLES

pytestmark = pytest.mark.slow

# the main object each photo must yield (any of the listed COCO classes)
EXPECTED_MAIN = {
    "horses.jpg": {"horse"},
    "chelsea_cat.png": {"cat"},
    "eagle.jpg": {"bird"},
    "astronaut.jpg": {"person"},
    "grace_hopper.jpg": {"person"},
    "cameraman_gray.png": {"person"},
    "coffee_cup.jpg": {"cup"},
    "giraffe_zebra.jpg": {"giraffe", "zebra"},
    "dog.jpg": {"dog", "bicycle", "car", "truck"},
    "person_dog_horse.jpg": {"person", "dog", "horse"},
}


@pytest.fixture(scope="module")
def sample_features(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    report = imgfeat.extract(SAMPLES, out, workers=1, progress=False)
    frame = pd.read_parquet(out)
    frame["name"] = frame.path.map(lambda p: Path(p).name)
    return report, frame.set_index("name")


def test_every_sample_is_ok(sample_features):
    report, frame = sample_features
    assert report.failed == 0 and report.ok == len(list(SAMPLES.glob("*.jpg"))) + len(list(SAMPLES.glob("*.png")))
    assert set(frame.status) == {"ok"}
    assert set(frame.detector) == {"centernet-mbv3"} and set(frame.embedder) == {"mobilenet-v2"}


@pytest.mark.parametrize("name", sorted(EXPECTED_MAIN))
def test_detector_finds_the_main_object(sample_features, name):
    _, frame = sample_features
    row = frame.loc[name]
    assert row.crop == "object", f"{name}: nothing detected"
    assert row.label in EXPECTED_MAIN[name], f"{name}: main object {row.label} ({row.score:.2f})"
    x1, y1, x2, y2 = row.box
    assert 0 <= x1 < x2 <= row.width and 0 <= y1 < y2 <= row.height


def test_boxes_are_in_original_pixels(sample_features):
    _, frame = sample_features
    horses = frame.loc["horses.jpg"]
    assert (horses.width, horses.height) == (773, 512)
    # the largest horse stands in the right half of the photo
    assert frame.loc["horses.jpg"].box[2] > 773 / 2


def test_embeddings_find_near_duplicates(tmp_path, sample_features):
    """A recompressed, resized copy of a photo is closer to it than to any other photo."""
    from PIL import Image

    _, frame = sample_features
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("horses.jpg", "chelsea_cat.png", "eagle.jpg"):
        with Image.open(SAMPLES / name) as image:
            small = image.convert("RGB").resize((image.width * 2 // 3, image.height * 2 // 3))
        small.save(copies / (Path(name).stem + ".jpg"), quality=40)
    imgfeat.extract(copies, tmp_path / "out", workers=0, progress=False)
    queries = pd.read_parquet(tmp_path / "out")
    database = np.stack(frame.embedding.to_numpy())
    for path, embedding in zip(queries.path, queries.embedding):
        similarities = database @ np.asarray(embedding)
        best = frame.index[int(np.argmax(similarities))]
        assert Path(best).stem == Path(path).stem, (path, best)
        assert similarities.max() > 0.85
