"""`extract --objects K` and `index --vector objects` (issue 13 item 2): up to K objects per
image in a list column, and a search that matches any of them, so a main object that flips
between two copies of a picture no longer loses the copy. Tiny test models throughout:
"test-blobs" finds one box per coloured rectangle, scored by its share of the coloured area."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import imgfeat
from imgfeat.config import PipelineConfig
from imgfeat.crop import select_objects
from imgfeat.errors import ConfigError, UnknownId
from imgfeat.retrieval.index import FeatureIndex
from imgfeat.retrieval.search import search
from imgfeat.runners.base import config_fingerprint

MODELS = {"detector": "test-blobs", "embedder": "test-tiny", "workers": 0, "progress": False}
RED, BLUE, GREEN, YELLOW, PURPLE = (220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20), (150, 20, 160)


def picture(path: Path, big, small, swap: bool = False) -> Path:
    """White 320x240 with a big and a small rectangle; `swap` shrinks the big one and grows the
    small one (same aspect ratios, places and colours) so that the main object changes."""
    image = np.full((240, 320, 3), 255, np.uint8)
    first, second = ((60, 100), (40, 60)) if not swap else ((30, 50), (80, 120))
    image[20:20 + first[0], 20:20 + first[1]] = big
    image[140:140 + second[0], 180:180 + second[1]] = small
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    picture(folder / "red_blue.png", RED, BLUE)
    picture(folder / "green_yellow.png", GREEN, YELLOW)
    picture(folder / "purple_green.png", PURPLE, GREEN)  # shares a green rectangle (but not its place)
    Image.fromarray(np.full((120, 160, 3), 255, np.uint8)).save(folder / "empty.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def test_select_objects_keeps_main_first_then_by_score_and_drops_overlaps():
    detections = np.asarray([
        [0, 0, 10, 10, 0.6, 0],      # 0
        [50, 50, 60, 60, 0.9, 1],    # 1: best score
        [0, 0, 10, 9, 0.8, 2],       # 2: the same box as 0 under another label (IoU 0.9)
        [20, 20, 30, 30, 0.5, 0],    # 3
        [40, 0, 45, 5, 0.2, 0],      # 4: under the threshold
    ], np.float32)
    assert select_objects(detections, 0.3, 5, main=0) == [0, 1, 3]
    assert select_objects(detections, 0.3, 2, main=0) == [0, 1]
    assert select_objects(detections, 0.1, 5, main=1) == [1, 2, 3, 4]
    assert select_objects(detections, 0.3, 3, main=None) == []
    assert select_objects(detections, 0.3, 0, main=1) == []


def test_objects_need_a_detector_and_a_count_of_zero_or_more():
    with pytest.raises(ConfigError, match="needs a detector"):
        PipelineConfig.from_options(detector="none", objects=2)
    with pytest.raises(ConfigError, match=">= 0"):
        PipelineConfig.from_options(objects=-1)


def test_fingerprint_unchanged_without_objects_and_changed_with_them():
    base = PipelineConfig.from_options(**MODELS)
    same = PipelineConfig.from_options(**MODELS, objects=0)
    assert config_fingerprint(base) == config_fingerprint(same)
    assert config_fingerprint(PipelineConfig.from_options(**MODELS, objects=3)) != config_fingerprint(base)


def test_objects_column_holds_every_object_main_first(catalogue, tmp_path):
    out = tmp_path / "features"
    report = imgfeat.extract(catalogue, out, objects=3, **MODELS)
    assert (report.ok, report.failed) == (4, 1)
    table = pq.read_table(sorted(out.glob("*.parquet")))
    assert pa.types.is_list(table.schema.field("objects").type)
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert rows["broken.jpg"]["objects"] is None  # an error row has no objects

    red_blue = rows["red_blue.png"]["objects"]
    assert len(red_blue) == 2
    main = red_blue[0]
    assert main["box"] == pytest.approx(rows["red_blue.png"]["box"])  # the main object comes first...
    assert main["code"] == rows["red_blue.png"]["code"]                # ...with the main vector's code
    assert np.allclose(main["embedding"], rows["red_blue.png"]["embedding"])
    assert main["score"] > red_blue[1]["score"]
    assert red_blue[1]["box"] == pytest.approx([180, 140, 240, 180])  # the small blue one
    assert not np.allclose(red_blue[1]["embedding"], main["embedding"])

    empty = rows["empty.png"]["objects"]  # nothing detected: one entry, the whole image
    assert len(empty) == 1 and empty[0]["label"] is None and empty[0]["score"] is None
    assert np.allclose(empty[0]["embedding"], rows["empty.png"]["image_embedding"])

    duckdb = pytest.importorskip("duckdb")  # a reader other than pyarrow: the nested column opens
    counts = duckdb.sql(f"SELECT len(objects) AS n FROM read_parquet('{out}/*.parquet') WHERE status = 'ok' "
                        "ORDER BY n").fetchall()
    assert [c[0] for c in counts] == [1, 2, 2, 2]


def test_without_objects_the_schema_is_unchanged(catalogue, tmp_path):
    imgfeat.extract(catalogue, tmp_path / "plain", **MODELS)
    schema = pq.read_schema(sorted((tmp_path / "plain").glob("*.parquet"))[0])
    assert "objects" not in schema.names
    with pytest.raises(ConfigError, match="--objects"):
        FeatureIndex.build(tmp_path / "plain", vector="objects")


def test_a_copy_whose_main_object_flipped_is_found_by_its_other_object(catalogue, tmp_path):
    features = tmp_path / "features"
    imgfeat.extract(catalogue, features, objects=3, **MODELS)
    query = picture(tmp_path / "copy.png", RED, BLUE, swap=True)  # blue is now the bigger: the main object

    objects_index = FeatureIndex.build(features, vector="objects")
    assert objects_index.crop == "objects" and len(objects_index) == 2 + 2 + 2 + 1
    found = search(objects_index, [query], k=3)
    assert Path(found.iloc[0]["path"]).name == "red_blue.png"
    assert found.iloc[0]["score"] > 0.95
    assert found["id"].is_unique  # a row is listed once, with its best pair of objects
    assert "#" not in found.iloc[0]["id"]

    # with the main objects only, the copy's blue main object is not the original's red one
    main_index = FeatureIndex.build(features, vector="object")
    by_main = search(main_index, [query], k=3)
    assert Path(by_main.iloc[0]["path"]).name != "red_blue.png"
    original = by_main[by_main["path"].str.endswith("red_blue.png")]
    assert original.empty or original.iloc[0]["score"] < found.iloc[0]["score"] - 0.5

    codes = search(objects_index, [query], k=1, using="code")  # the codes of every object too
    assert Path(codes.iloc[0]["path"]).name == "red_blue.png"


def test_objects_index_by_row_id_remove_save_and_shards(catalogue, tmp_path):
    features = tmp_path / "features"
    imgfeat.extract(catalogue, features, objects=3, shard_size=2, **MODELS)
    index = FeatureIndex.build(features, vector="objects")
    row = next(e.rsplit("#", 1)[0] for e in index.ids() if Path(index.metadata([e])[0]["path"]).name
               == "green_yellow.png")
    assert index.contains(row) and index.expand_ids([row]) == [f"{row}#0", f"{row}#1"]
    assert Path(index.metadata([row])[0]["path"]).name == "green_yellow.png"  # its main object's

    neighbours = search(index, ids=[row], k=3, exclude_self=True)
    assert row not in set(neighbours["id"])
    # purple_green shares the green rectangle: the best other row
    assert Path(neighbours.iloc[0]["path"]).name == "purple_green.png"

    index.save(tmp_path / "index")
    loaded = FeatureIndex.load(tmp_path / "index")
    assert loaded.crop == "objects" and loaded.remove([row]) == 2 and not loaded.contains(row)
    with pytest.raises(UnknownId):
        loaded.remove([row])
    assert loaded.add(features) == (2, 5)  # its two objects come back; the others were there

    sharded = imgfeat.index(features, tmp_path / "sharded", vector="objects", shards=2)
    assert len(sharded) == len(index) and sharded.contains(row)
    again = search(sharded, ids=[row], k=3, exclude_self=True)
    assert list(again["id"]) == list(neighbours["id"])
    assert sharded.remove([row]) == 2 and not sharded.contains(row)


def test_the_server_searches_with_every_object_of_an_upload(catalogue, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from imgfeat.serve import create_app

    imgfeat.extract(catalogue, tmp_path / "features", objects=3, **MODELS)
    FeatureIndex.build(tmp_path / "features", vector="objects").save(tmp_path / "index")
    upload = picture(tmp_path / "copy.png", RED, BLUE, swap=True).read_bytes()
    with TestClient(create_app(tmp_path / "index"), base_url="http://localhost") as client:
        response = client.post("/search?k=2", content=upload)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert Path(results[0]["path"]).name == "red_blue.png" and results[0]["score"] > 0.95
        assert len({r["id"] for r in results}) == len(results) and all("#" not in r["id"] for r in results)
        item = client.get(f"/items/{results[0]['id']}")
        assert item.status_code == 200 and Path(item.json()["path"]).name == "red_blue.png"
