"""Search by image through the real pipeline (default models) and by id; the search CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("faiss")

import imgfeat  # noqa: E402
from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ConfigError, UnknownId  # noqa: E402
from imgfeat.retrieval.index import FeatureIndex  # noqa: E402
from imgfeat.retrieval.search import search  # noqa: E402

from conftest import SAMPLES  # noqa: E402

pytestmark = pytest.mark.slow
PHOTOS = ("dog.jpg", "horses.jpg", "coffee_cup.jpg", "chelsea_cat.png")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, FeatureIndex, Path]:
    root = tmp_path_factory.mktemp("search")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, photos / name)
    report = imgfeat.extract(photos, root / "features", workers=0, progress=False)
    assert report.ok == len(PHOTOS)
    index = FeatureIndex.build(root / "features")
    index.save(root / "index")
    return photos, index, root / "index"


def test_the_same_photo_finds_itself_first(indexed):
    photos, index, _ = indexed
    results = search(index, [str(photos / "horses.jpg"), str(photos / "chelsea_cat.png")], k=3)
    assert list(results.columns)[:7] == ["query", "id", "path", "score", "rank", "box", "label"]
    top = results[results["rank"] == 1].set_index("query")
    assert top.loc[str(photos / "horses.jpg"), "path"].endswith("horses.jpg")
    assert top.loc[str(photos / "chelsea_cat.png"), "path"].endswith("chelsea_cat.png")
    assert (top["score"] > 0.999).all()
    assert len(results) == 6 and results["rank"].tolist() == [1, 2, 3, 1, 2, 3]


def test_a_resized_recompressed_copy_finds_the_original(indexed, tmp_path):
    photos, index, _ = indexed
    image = Image.open(photos / "coffee_cup.jpg")
    buffer = io.BytesIO()
    image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(buffer, "JPEG", quality=35)
    results = search(index, [buffer.getvalue(), b"not an image"], k=2)
    first = results.iloc[0]
    assert first["query"] == "image-0" and first["path"].endswith("coffee_cup.jpg")
    assert first["score"] > 0.9 and first["score"] > results.iloc[1]["score"] + 0.05
    bad = results[results["query"] == "image-1"]
    assert len(bad) == 1 and bad.iloc[0]["error"].startswith(("not-an-image", "corrupt"))


def test_search_by_id_and_by_code(indexed):
    _, index, _ = indexed
    cat = next(m for m in index.metadata(index.ids()) if m["path"].endswith("chelsea_cat.png"))["id"]
    results = search(index, ids=[cat], k=2)
    assert results.iloc[0]["id"] == cat and results.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert cat not in search(index, ids=[cat], k=2, exclude_self=True)["id"].tolist()
    by_code = search(index, ids=[cat], k=1, using="code")
    assert by_code.iloc[0]["id"] == cat and by_code.iloc[0]["score"] == 1.0
    with pytest.raises(UnknownId, match="no-such-id"):
        search(index, ids=["no-such-id"])
    with pytest.raises(ConfigError, match="images or ids"):
        search(index)


def test_cli_search(indexed, capsys):
    photos, _, index_dir = indexed
    assert main(["search", str(index_dir), str(photos / "dog.jpg"), "missing.jpg", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(photos / "dog.jpg") and "1.0000" in out[1] and out[1].endswith("dog.jpg")
    assert out[3] == "missing.jpg" and out[4].startswith("  error: not-found: ")
    assert main(["search", str(index_dir), str(photos / "dog.jpg"), "missing.jpg", "-k", "1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["rank"] == 1 and records[0]["path"].endswith("dog.jpg")
    assert records[1]["error"].startswith("not-found")
    dog = records[0]["id"]
    assert main(["search", str(index_dir), "--id", dog, "-k", "1", "--csv"]) == 0  # by id: no models loaded
    assert capsys.readouterr().out.startswith(f"query,id,path,score,rank,box,label,error\n{dog},{dog},")
    assert main(["search", str(index_dir), "--id", "nope"]) == 1
    assert "not in the index" in capsys.readouterr().err
