"""The Beam runner and imgfeat.beam against the local reference, on the DirectRunner.

Needs imgfeat[beam]; apache-beam caps pyarrow below 26, and pyarrow < 26 cannot read back a
Parquet fixed-size list column holding nulls ("Expected all lists to be of size=4"): the
box and embedding of an error row. So the embeddings are compared on shards with no error
rows (bad files are named to sort last, into shards of their own) and every row is
compared on the other columns.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import imgfeat
from imgfeat.errors import MissingExtra
from imgfeat.runners import RUNNERS
from imgfeat.runners.tasks import FAULT_ENV
from imgfeat.sources import stable_id

from conftest import AWKWARD, FAST_MODELS, SAMPLES, blob_image

SCALARS = ["id", "path", "status", "error", "width", "height", "label", "crop", "code"]
BAD = ["truncated.jpg", "random_bytes.jpg", "empty.jpg", "text_named.jpg"]


def _beam():
    return pytest.importorskip("apache_beam", reason="needs apache-beam: pip install 'imgfeat[beam]'")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """8 good images (shards 0-1 of 4), then bad files and a dangling link (shards 2-3)."""
    folder = tmp_path_factory.mktemp("beam") / "in"
    folder.mkdir()
    for i in range(8):
        blob_image(folder / f"a{i:02d}.jpg", offset=i * 9)
    for name in BAD:
        shutil.copy(AWKWARD / name, folder / f"zz_{name}")
    (folder / "zz_dangling.jpg").symlink_to(folder / "no-such-file.jpg")
    return folder


def scalars(output: Path) -> list[dict]:
    rows = pq.read_table(output, columns=SCALARS).to_pylist()
    for row in rows:
        row["error"] = row["error"] and row["error"].split(":")[0]
    return sorted(rows, key=lambda r: r["id"])


def embeddings(output: Path) -> dict[str, np.ndarray]:
    """Embeddings of the rows of shards without error rows (see the module docstring)."""
    shards = json.loads((output / "_manifest.json").read_text())["shards"]
    out = {}
    for shard in sorted(output.glob("part-*.parquet")):
        if shards[shard.name]["failed"] == 0:
            table = pq.read_table(shard, columns=["id", "embedding"])
            out.update(zip(table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(False))))
    return out


def assert_same_output(reference: Path, other: Path, min_embeddings: int) -> None:
    assert scalars(other) == scalars(reference)
    names = sorted(p.name for p in reference.glob("part-*.parquet"))
    assert sorted(p.name for p in other.glob("part-*.parquet")) == names
    ref, got = embeddings(reference), embeddings(other)
    assert len(ref) >= min_embeddings and sorted(got) == sorted(ref)
    for key, value in ref.items():
        np.testing.assert_allclose(got[key], value, atol=1e-5)


@pytest.mark.beam
def test_beam_engine_writes_the_local_runners_rows(folder, tmp_path):
    _beam()
    local = imgfeat.extract(folder, tmp_path / "local", shard_size=4, **FAST_MODELS)
    on_beam = imgfeat.extract(folder, tmp_path / "beam", engine="beam", shard_size=4, **FAST_MODELS)
    assert (on_beam.processed, on_beam.ok, on_beam.failed, on_beam.errors) == \
        (local.processed, local.ok, local.failed, local.errors) == (13, 8, 5, on_beam.errors)
    assert set(on_beam.errors) >= {"corrupt", "not-found", "empty"}
    assert set(on_beam.stage_seconds) >= {"read", "decode", "detect", "embed", "write"}
    assert_same_output(tmp_path / "local", tmp_path / "beam", min_embeddings=8)
    manifest = json.loads((tmp_path / "beam" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["last_run"]["engine"] == "beam"


@pytest.mark.beam
def test_beam_worker_failure_is_retried_without_duplicate_rows(folder, tmp_path, monkeypatch):
    _beam()
    flag = tmp_path / "fail-once"
    flag.touch()
    monkeypatch.setenv(FAULT_ENV, str(flag))
    # one attempt: the failure ends the run; the shards committed stay, and nothing half-written
    # is visible (a shard being written when the run failed is a hidden temporary file, which
    # the next run's plan removes)
    with pytest.raises(Exception, match="injected worker failure"):  # the runner wraps it
        imgfeat.extract(folder, tmp_path / "out", engine="beam", shard_size=3,
                        engine_options={"attempts": 1}, **FAST_MODELS)
    assert not flag.exists()
    names = [n for n in os.listdir(tmp_path / "out") if not n.startswith(".")]
    assert all(n == "_manifest.json" or n.startswith("part-") for n in names), names
    assert len([n for n in names if n.startswith("part-")]) < 5
    # the default: the driver submits the shards left again, in the same call
    flag.touch()
    shutil.rmtree(tmp_path / "out")
    report = imgfeat.extract(folder, tmp_path / "out", engine="beam", shard_size=3, **FAST_MODELS)
    assert not flag.exists(), "no worker failed: the fault hook did not run"
    assert (report.processed, report.failed) == (13, 5)
    rows = scalars(tmp_path / "out")
    assert len(rows) == 13 and len({r["id"] for r in rows}) == 13
    monkeypatch.delenv(FAULT_ENV)
    imgfeat.extract(folder, tmp_path / "local", shard_size=3, **FAST_MODELS)
    assert rows == scalars(tmp_path / "local")
    assert imgfeat.info(tmp_path / "out")["complete"]


@pytest.mark.beam
def test_beam_resumes_what_the_local_runner_wrote(folder, tmp_path):
    _beam()
    out = tmp_path / "out"
    imgfeat.extract(folder, out, shard_size=4, **FAST_MODELS)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / "part-00001.parquet").unlink()
    again = imgfeat.extract(folder, out, engine="beam", shard_size=4, **FAST_MODELS)
    assert (again.processed, again.skipped, again.failed) == (4, 9, 0)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept["part-00000.parquet"]
    assert len(scalars(out)) == 13 and imgfeat.info(out)["complete"]
    done = imgfeat.extract(folder, out, engine="beam", shard_size=4, **FAST_MODELS)
    assert (done.processed, done.skipped, done.output_rows, done.output_failed) == (0, 13, 13, 5)


_COLLECTED: dict[str, list] = {}


def _collect(element, key: str):
    _COLLECTED.setdefault(key, []).append(element)
    return element


@pytest.mark.beam
def test_extract_features_transform_and_dead_letter(folder, tmp_path):
    beam = _beam()
    import imgfeat.beam as ib

    imgfeat.extract(folder, tmp_path / "local", shard_size=100, **FAST_MODELS)
    reference = {r["id"]: r for r in scalars(tmp_path / "local")}
    good = sorted(str(p) for p in folder.glob("a*.jpg"))
    schema = ib.feature_schema(**FAST_MODELS)
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        rows = p | "paths" >> beam.Create(good) | "paths features" >> ib.ExtractFeatures(**FAST_MODELS)
        _ = rows | beam.io.WriteToParquet(str(tmp_path / "written" / "part"), schema, file_name_suffix=".parquet")
        tables = p | "paths again" >> beam.Create(good) | "as tables" >> ib.ExtractFeatures(tables=True, **FAST_MODELS)
        _ = tables | beam.io.WriteToParquetBatched(str(tmp_path / "batched" / "part"), schema,
                                                    file_name_suffix=".parquet")
        pairs = [(f"bad-{i}", (AWKWARD / name).read_bytes()) for i, name in enumerate(BAD)]
        pairs += [("good", (folder / "a00.jpg").read_bytes()), ("none", None)]
        split = (p | "pairs" >> beam.Create(pairs + [str(folder / "zz_dangling.jpg")])
                 | "pair features" >> ib.ExtractFeatures(**FAST_MODELS) | ib.SplitErrors())
        _ = split.ok | "ok" >> beam.Map(_collect, "ok")
        _ = split.errors | "errors" >> beam.Map(_collect, "errors")
    written = pq.read_table(tmp_path / "written")
    assert written.schema.equals(schema)
    assert sorted(written.column("status").to_pylist()) == ["ok"] * 8
    ids = written.column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in reference.values() if r["status"] == "ok")
    batched = pq.read_table(tmp_path / "batched")
    assert batched.schema.equals(schema) and sorted(batched.to_pylist(), key=lambda r: r["id"]) == \
        sorted(written.to_pylist(), key=lambda r: r["id"])
    config = imgfeat.PipelineConfig.from_options(**FAST_MODELS)
    local_rows = {r["id"]: r for r in ib.features_table(good, config).to_pylist()}
    for row in written.to_pylist():
        np.testing.assert_allclose(row["embedding"], local_rows[row["id"]]["embedding"], atol=1e-5)
        assert row["code"] == reference[row["id"]]["code"]
    assert [r["id"] for r in _COLLECTED["ok"]] == ["good"]
    errors = {r["id"]: r["error"].split(":")[0] for r in _COLLECTED["errors"]}
    assert errors["none"] == "read-error" and errors[stable_id(str(folder / "zz_dangling.jpg"))] == "not-found"
    assert sorted(errors[f"bad-{i}"] for i in range(len(BAD))) == \
        sorted(reference[i]["error"] for i in reference if reference[i]["path"].rsplit("zz_", 1)[-1] in BAD)


@pytest.mark.beam
def test_model_handler_in_run_inference_and_the_error_ratio(folder, tmp_path):
    beam = _beam()
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    import imgfeat.beam as ib

    config = imgfeat.PipelineConfig.from_options(**FAST_MODELS)
    images = [(folder / f"a{i:02d}.jpg").read_bytes() for i in range(5)]
    expected = ib.features_table([(f"k{i}", b) for i, b in enumerate(images)], config).to_pylist()
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        results = (p | beam.Create([(f"k{i}", b) for i, b in enumerate(images)] + [("broken", b"\xff\xd8 no")])
                   | RunInference(KeyedModelHandler(ib.ImgfeatModelHandler(config))))
        split = results | ib.SplitErrors()
        _ = split.ok | "ok" >> beam.Map(_collect, "ok")
        _ = split.errors | "errors" >> beam.Map(_collect, "errors")
    ok = {key: result.inference for key, result in _COLLECTED["ok"]}
    assert sorted(ok) == [f"k{i}" for i in range(5)]
    for i, row in enumerate(expected):
        np.testing.assert_allclose(ok[f"k{i}"]["embedding"], row["embedding"], atol=1e-5)
        assert ok[f"k{i}"]["code"] == row["code"] and ok[f"k{i}"]["box"] == row["box"]
    [(key, failed)] = _COLLECTED["errors"]
    assert key == "broken" and failed.inference["status"] == "error"
    assert failed.inference["error"].startswith("not-an-image")
    # 1 of 6 failed: more than a 10 % limit fails the pipeline
    with pytest.raises(Exception, match="1 of 6 images failed"):
        with beam.Pipeline("DirectRunner") as p:
            _ = (p | beam.Create(images + [b"\xff\xd8 no"])
                 | RunInference(ib.ImgfeatModelHandler(config)) | ib.SplitErrors(max_error_ratio=0.1))


@pytest.mark.beam
def test_cli_engine_beam_with_a_runner(folder, tmp_path):
    _beam()
    done = subprocess.run([sys.executable, "-m", "imgfeat.cli", "extract", str(folder), "-o", str(tmp_path / "out"),
                           "--engine", "beam", "--runner", "DirectRunner", "--beam-option=--direct_num_workers=1",
                           "--detector", "test-blob", "--embedder", "test-tiny", "--no-progress", "--shard-size", "5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "13 images" in done.stdout and "8 ok, 5 failed" in done.stdout
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["last_run"]["engine"] == "beam"


@pytest.mark.slow
@pytest.mark.beam
def test_beam_engine_with_the_real_models(tmp_path):
    _beam()
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("dog.jpg", "horses.jpg", "eagle.jpg", "chelsea_cat.png"):
        shutil.copy(SAMPLES / name, photos / name)
    options = {"workers": 1, "progress": False, "shard_size": 2}
    imgfeat.extract(photos, tmp_path / "local", **options)
    imgfeat.extract(photos, tmp_path / "beam", engine="beam", **options)
    assert_same_output(tmp_path / "local", tmp_path / "beam", min_embeddings=4)
    assert {r["label"] for r in scalars(tmp_path / "beam")} >= {"horse", "cat", "bird"}


def test_missing_beam_names_the_extra(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "imgfeat.beam", raising=False)
    with pytest.raises(MissingExtra, match=r"imgfeat\[beam\]"):
        RUNNERS["beam"](imgfeat.open_source(folder), str(tmp_path / "o"),
                        imgfeat.PipelineConfig.from_options(**FAST_MODELS))
    with pytest.raises(MissingExtra, match=r"imgfeat\[beam\]"):
        importlib.import_module("imgfeat.beam")
