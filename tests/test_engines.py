"""Spark and Ray runners against the local reference: same rows, faults retried, resume.

One Spark session (local[2,3]: two cores, a task may fail 3 times) and one local Ray
instance serve the whole module; each costs seconds to start.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import imgfeat
import imgfeat.ray
import imgfeat.spark
from imgfeat.errors import MissingExtra
from imgfeat.runners import RUNNERS
from imgfeat.runners.tasks import FAULT_ENV

from conftest import AWKWARD, FAST_MODELS, SAMPLES, blob_image

pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray"),
]

PHOTOS = ["dog.jpg", "horses.jpg", "eagle.jpg", "chelsea_cat.png", "coffee_cup.jpg", "giraffe_zebra.jpg"]
BAD = ["truncated.jpg", "random_bytes.jpg", "empty.jpg", "text_named.jpg"]
FAST = dict(FAST_MODELS)


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from imgfeat.runners.spark import spark_session

    session, created = spark_session("local[2,3]")
    yield session
    if created:
        session.stop()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Real photos with bad files mixed in, and a dangling link."""
    folder = tmp_path_factory.mktemp("engines") / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, folder / name)
    for name in BAD:
        shutil.copy(AWKWARD / name, folder / f"bad_{name}")
    (folder / "dangling.jpg").symlink_to(folder / "no-such-file.jpg")
    return folder


@pytest.fixture(scope="module")
def blob_folder_12(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blobs12")
    for i in range(11):
        blob_image(folder / f"img{i:02d}.jpg", offset=i * 7)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return folder


def read(output: Path) -> pd.DataFrame:
    frame = pd.read_parquet(output)
    return frame.sort_values("id").reset_index(drop=True)


def plain(column: pd.Series) -> list:
    return [None if pd.isna(value) else value for value in column]


def assert_same_rows(reference: pd.DataFrame, other: pd.DataFrame) -> None:
    assert list(other["id"]) == list(reference["id"])
    assert other["id"].is_unique
    for column in ("path", "status", "label", "crop", "width", "height"):
        assert plain(other[column]) == plain(reference[column]), column
    assert [e.split(":")[0] if e else None for e in plain(other["error"])] == \
        [e.split(":")[0] if e else None for e in plain(reference["error"])]
    assert list(other["code"]) == list(reference["code"])
    ok = reference["status"] == "ok"
    np.testing.assert_allclose(np.stack(other["box"][ok]), np.stack(reference["box"][ok]), atol=1e-3)
    np.testing.assert_allclose(np.stack(other["embedding"][ok]), np.stack(reference["embedding"][ok]),
                               atol=1e-4)


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_three_engines_agree_with_the_real_models(spark, ray_local, photo_folder, tmp_path):
    options = {"workers": 1, "progress": False, "shard_size": 4}
    local = imgfeat.extract(photo_folder, tmp_path / "local", **options)
    on_spark = imgfeat.extract(photo_folder, tmp_path / "spark", engine="spark", **options)
    on_ray = imgfeat.extract(photo_folder, tmp_path / "ray", engine="ray",
                             engine_options={"actors": 1}, **options)
    reference = read(tmp_path / "local")
    assert len(reference) == len(PHOTOS) + len(BAD) + 1
    assert (reference["status"] == "ok").sum() == len(PHOTOS)
    assert set(reference["label"].dropna()) >= {"horse", "cat", "bird"}
    for report in (on_spark, on_ray):
        assert (report.processed, report.ok, report.errors) == (local.processed, local.ok, local.errors)
    for engine in ("spark", "ray"):
        assert sorted(p.name for p in (tmp_path / engine).glob("part-*.parquet")) == \
            sorted(p.name for p in (tmp_path / "local").glob("part-*.parquet"))
        assert_same_rows(reference, read(tmp_path / engine))
        assert imgfeat.info(tmp_path / engine)["complete"]


@pytest.mark.spark
def test_spark_worker_killed_mid_task_is_retried(spark, blob_folder_12, tmp_path, monkeypatch):
    flag = tmp_path / "kill-once"
    flag.touch()
    monkeypatch.setenv(FAULT_ENV, str(flag))
    report = imgfeat.extract(blob_folder_12, tmp_path / "out", engine="spark", shard_size=3, **FAST)
    assert not flag.exists(), "no worker died: the fault hook did not run"
    frame = read(tmp_path / "out")
    assert len(frame) == 12 and frame["id"].is_unique
    assert report.processed == 12 and report.failed == 1
    monkeypatch.delenv(FAULT_ENV)
    imgfeat.extract(blob_folder_12, tmp_path / "reference", **FAST, shard_size=3)
    assert_same_rows(read(tmp_path / "reference"), frame)


@pytest.mark.ray
def test_ray_actor_killed_mid_task_is_restarted_and_retried(ray_local, blob_folder_12, tmp_path, monkeypatch):
    flag = tmp_path / "kill-once"
    flag.touch()
    monkeypatch.setenv(FAULT_ENV, str(flag))
    report = imgfeat.extract(blob_folder_12, tmp_path / "out", engine="ray", shard_size=3,
                             engine_options={"actors": 1}, **FAST)
    assert not flag.exists(), "no actor died: the fault hook did not run"
    frame = read(tmp_path / "out")
    assert len(frame) == 12 and frame["id"].is_unique
    assert report.processed == 12 and report.failed == 1


@pytest.mark.spark
@pytest.mark.ray
def test_rerun_resumes_across_engines(spark, ray_local, blob_folder_12, tmp_path):
    out = tmp_path / "out"
    first = imgfeat.extract(blob_folder_12, out, engine="spark", shard_size=5, **FAST)
    assert (first.processed, first.skipped) == (12, 0)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert sorted(kept) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    (out / "part-00001.parquet").unlink()
    again = imgfeat.extract(blob_folder_12, out, engine="spark", shard_size=5, **FAST)
    assert (again.processed, again.skipped) == (5, 7)
    (out / "part-00002.parquet").unlink()
    # the same layout and manifest: Ray resumes what Spark wrote
    on_ray = imgfeat.extract(blob_folder_12, out, engine="ray", shard_size=5, **FAST)
    assert (on_ray.processed, on_ray.skipped) == (2, 10)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept["part-00000.parquet"]
    frame = read(out)
    assert len(frame) == 12 and frame["id"].is_unique
    assert imgfeat.info(out)["complete"]


@pytest.mark.spark
def test_spark_dataframe_api_on_binary_files(spark, photo_folder, tmp_path):
    imgfeat.extract(photo_folder, tmp_path / "local", shard_size=100, **FAST)
    df = spark.read.format("binaryFile").load(str(photo_folder))
    features = imgfeat.spark.extract(df, **FAST)
    assert features.columns == [c for c in imgfeat.schema.COLUMNS if c != "objects"]  # objects: --objects K
    features.write.parquet(str(tmp_path / "written"))
    reference = read(tmp_path / "local")
    # binaryFile lists neither the dangling link nor the empty file: compare the files it saw
    written = read(tmp_path / "written")
    unseen = {Path(p).name for p in reference["path"][~reference["id"].isin(written["id"])]}
    assert unseen == {"dangling.jpg", "bad_empty.jpg"}
    assert_same_rows(reference[reference["id"].isin(written["id"])].reset_index(drop=True), written)
    # paths only: the workers read them, and the missing file is a row
    paths = spark.createDataFrame([(str(p),) for p in sorted(photo_folder.iterdir())], "path string")
    imgfeat.spark.extract(paths, **FAST).write.parquet(str(tmp_path / "from_paths"))
    from_paths = read(tmp_path / "from_paths")
    assert list(from_paths["id"]) == list(reference["id"])
    assert list(from_paths["status"]) == list(reference["status"])


@pytest.mark.ray
def test_ray_dataset_api_on_binary_files(ray_local, photo_folder, tmp_path):
    imgfeat.extract(photo_folder, tmp_path / "local", shard_size=100, **FAST)
    files = [str(p) for p in sorted(photo_folder.iterdir()) if p.exists()]
    ds = ray_local.data.read_binary_files(files, include_paths=True)
    features = imgfeat.ray.extract(ds, actors=1, **FAST)
    features.write_parquet(str(tmp_path / "written"))
    reference = read(tmp_path / "local")
    written = read(tmp_path / "written")
    assert len(written) == len(files) == len(reference) - 1
    assert_same_rows(reference[reference["id"].isin(written["id"])].reset_index(drop=True), written)


def test_missing_engine_names_the_extra(blob_folder_12, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingExtra, match=r"imgfeat\[spark\]"):
        RUNNERS["spark"](imgfeat.open_source(blob_folder_12), str(tmp_path / "o"),
                         imgfeat.PipelineConfig.from_options(**FAST))
    with pytest.raises(MissingExtra, match=r"imgfeat\[ray\]"):
        RUNNERS["ray"](imgfeat.open_source(blob_folder_12), str(tmp_path / "o"),
                       imgfeat.PipelineConfig.from_options(**FAST))
    with pytest.raises(MissingExtra, match=r"imgfeat\[spark\]"):
        imgfeat.spark.extract(object())


@pytest.mark.ray
def test_cli_ray_run_keeps_ray_data_info_logs_off_the_terminal(blob_folder_12, tmp_path):
    # a session the CLI starts is its own to quiet: imgfeat's report, not Ray Data's INFO lines
    pytest.importorskip("ray")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "imgfeat.cli", "extract", str(blob_folder_12), "-o",
                           str(tmp_path / "out"), "--engine", "ray", "--detector", "test-blob",
                           "--embedder", "test-tiny", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 images" in done.stdout
    assert not re.search(r"\sINFO\s", done.stderr), done.stderr[-2000:]


def _objects_of(frame: pd.DataFrame) -> list:
    """Per row: (box, label, code) of each stored object, None for an error row."""
    return [None if objects is None else [(tuple(np.round(o["box"], 2)), o["label"], bytes(o["code"]))
                                          for o in objects]
            for objects in frame["objects"]]


@pytest.mark.spark
@pytest.mark.ray
def test_objects_column_is_the_same_on_every_engine(spark, ray_local, tmp_path):
    """`--objects K` rows (a nested list of structs) from Spark, Ray and Spark's DataFrame API
    equal the local runner's."""
    from test_objects import BLUE, GREEN, RED, YELLOW, picture

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (big, small) in enumerate([(RED, BLUE), (GREEN, YELLOW), (BLUE, GREEN)]):
        picture(folder / f"pair{i}.png", big, small)
    (folder / "broken.jpg").write_bytes(b"not an image")
    models = dict(FAST, detector="test-blobs", objects=3)
    imgfeat.extract(folder, tmp_path / "local", shard_size=2, **models)
    reference = read(tmp_path / "local")
    assert sorted(len(o) if o is not None else 0 for o in reference["objects"]) == [0, 2, 2, 2]
    for engine in ("spark", "ray"):
        imgfeat.extract(folder, tmp_path / engine, shard_size=2, engine=engine, **models)
        assert _objects_of(read(tmp_path / engine)) == _objects_of(reference), engine
    df = spark.read.format("binaryFile").load(str(folder))
    imgfeat.spark.extract(df, **models).write.parquet(str(tmp_path / "api"))
    written = read(tmp_path / "api")
    assert _objects_of(written) == _objects_of(reference.set_index("id").loc[written["id"]].reset_index())
