"""Incremental extract: a source that gained inputs costs only the new ones, in new shards;
every id lands exactly once across runs and kills; --prune drops the rows of inputs gone."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import imgfeat
from imgfeat.cli import main
from imgfeat.errors import ConfigError, OutputError

from conftest import FAST_MODELS, blob_image


def add_images(folder: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        blob_image(folder / f"img{i:03d}.jpg", offset=i % 40)


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("part-*.parquet"))}


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    add_images(folder, 0, 7)
    return folder


def test_added_inputs_go_to_new_shards_and_old_shards_stay_byte_identical(source, tmp_path):
    out = tmp_path / "out"
    first = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    before = digests(out)
    assert first.processed == 7 and list(before) == [f"part-0000{i}.parquet" for i in range(3)]
    add_images(source, 7, 4)

    second = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)

    assert (second.processed, second.skipped, second.output_rows) == (4, 7, 11)
    after = digests(out)
    assert {name: after[name] for name in before} == before  # the first run's files untouched
    assert sorted(set(after) - set(before)) == ["part-00003.parquet", "part-00004.parquet"]
    new_paths = pd.concat(pd.read_parquet(out / f"part-0000{i}.parquet") for i in (3, 4)).path
    assert sorted(Path(p).name for p in new_paths) == [f"img{i:03d}.jpg" for i in range(7, 11)]
    table = rows(out)
    assert len(table) == 11 and table.id.is_unique and set(table.path.map(lambda p: Path(p).name)) == {
        f"img{i:03d}.jpg" for i in range(11)}
    recorded = manifest(out)
    assert recorded["complete"] and recorded["num_shards"] == 5
    assert [(r["run"], r["first_shard"], r["num_shards"], r["added"], r["shards_written"], r["engine"])
            for r in recorded["runs"]] == [(1, 0, 3, 7, 3, "local"), (2, 3, 2, 4, 2, "local")]
    assert all(r["started"] and r["finished"] for r in recorded["runs"])

    third = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)  # nothing new: nothing done
    assert (third.processed, third.skipped) == (0, 11)
    assert digests(out) == after and len(manifest(out)["runs"]) == 2


def test_output_from_before_runs_were_recorded_grows_too(source, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    old = manifest(out)
    del old["runs"]
    (out / "_manifest.json").write_text(json.dumps(old))
    add_images(source, 7, 2)
    report = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    assert (report.processed, report.skipped) == (2, 7)
    assert [r["first_shard"] for r in manifest(out)["runs"]] == [0, 3]
    assert rows(out).id.is_unique and len(rows(out)) == 9


def test_changed_settings_or_models_are_still_refused(source, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    add_images(source, 7, 2)
    before = digests(out)
    with pytest.raises(OutputError, match="config_fingerprint differs"):
        imgfeat.extract(source, out, shard_size=3, code_bits=128, **FAST_MODELS)
    with pytest.raises(OutputError, match="shard_size differs"):
        imgfeat.extract(source, out, shard_size=4, **FAST_MODELS)
    with pytest.raises(OutputError, match="overwrite"):
        imgfeat.extract(source, out, shard_size=3, **dict(FAST_MODELS, detector="none"))
    assert digests(out) == before and len(manifest(out)["runs"]) == 1


def test_prune_rewrites_only_the_shards_of_inputs_gone(source, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    before = digests(out)
    gone = set(rows(out).query("path.str.endswith('img001.jpg') or path.str.endswith('img006.jpg')").id)
    (source / "img001.jpg").unlink()
    (source / "img006.jpg").unlink()
    add_images(source, 7, 1)

    kept = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)  # without --prune: rows stay
    assert (kept.processed, kept.pruned, len(rows(out))) == (1, 0, 8)

    code = main(["extract", str(source), "-o", str(out), "--prune", "--shard-size", "3", "--detector",
                 "test-blob", "--embedder", "test-tiny", "--workers", "0", "--no-progress"])

    assert code == 0
    table = rows(out)
    assert len(table) == 6 and table.id.is_unique and not gone & set(table.id)
    after = digests(out)
    assert after["part-00001.parquet"] == before["part-00001.parquet"]  # img003..img005: no input gone
    assert after["part-00000.parquet"] != before["part-00000.parquet"]
    assert len(pd.read_parquet(out / "part-00002.parquet")) == 0  # emptied shards stay, empty
    recorded = manifest(out)
    assert recorded["runs"][-1]["pruned"] == 2 and recorded["complete"]
    assert sum(s["rows"] for s in recorded["shards"].values()) == 6
    assert imgfeat.info(str(out))["rows"] == 6

    (source / "img001.jpg").write_bytes(b"")  # an input that comes back is computed again
    report = imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    assert report.processed == 1 and len(rows(out)) == 7 and rows(out).id.is_unique


def test_prune_refuses_a_source_that_would_empty_the_output(source, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    before, recorded = digests(out), (out / "_manifest.json").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    add_images(other, 100, 2)
    with pytest.raises(OutputError, match="drop every row"):
        imgfeat.extract(other, out, shard_size=3, prune=True, **FAST_MODELS)
    assert digests(out) == before and (out / "_manifest.json").read_bytes() == recorded
    with pytest.raises(ConfigError, match="limit"):
        imgfeat.extract(source, out, shard_size=3, prune=True, limit=3, **FAST_MODELS)


KILL_AFTER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import imgfeat
from conftest import FAST_MODELS
out = Path({out!r})
start = len(list(out.glob("part-*.parquet")))
def progress(done, failed, todo):  # SIGKILL itself once the writer committed two new shards
    if len(list(out.glob("part-*.parquet"))) >= start + 2:
        os.kill(os.getpid(), signal.SIGKILL)
imgfeat.extract({src!r}, str(out), shard_size=2, on_progress=progress, **dict(FAST_MODELS, progress=False))
"""


def killed_run(src: Path, out: Path) -> None:
    script = KILL_AFTER.format(tests=str(Path(__file__).parent), out=str(out), src=str(src))
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert process.returncode == -9, process.stderr


@pytest.mark.parametrize("source_changes", [False, True], ids=["resumed", "source-changed-meanwhile"])
def test_killed_incremental_run_then_rerun_gives_every_id_exactly_once(source, tmp_path, source_changes):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=2, **FAST_MODELS)  # shards 0..3
    first = digests(out)
    add_images(source, 7, 12)  # run 2: shards 4..9
    killed_run(source, out)
    recorded = manifest(out)
    assert recorded["runs"][-1]["first_shard"] == 4 and recorded["runs"][-1]["num_shards"] == 6
    assert not recorded["complete"]  # planned before any shard was written, unfinished
    written = set(digests(out)) - set(first)
    assert 2 <= len(written) < 6, written
    if source_changes:
        add_images(source, 19, 3)

    report = imgfeat.extract(source, out, shard_size=2, **FAST_MODELS)

    table = rows(out)
    total = 19 + (3 if source_changes else 0)
    assert len(table) == total and table.id.is_unique
    assert {name: digests(out)[name] for name in first} == first
    runs = manifest(out)["runs"]
    assert manifest(out)["complete"]
    assert report.skipped == 7 + 2 * len(written)
    if source_changes:  # run 2 closed as it stood, its unwritten shards' inputs in run 3
        assert runs[1].get("abandoned") and len(runs) == 3 and runs[2]["first_shard"] == 10
        assert report.processed == 12 - 2 * len(written) + 3
        for index in runs[1]["abandoned"]:
            assert not (out / f"part-{index:05d}.parquet").exists()
    else:  # run 2 resumed: same shards, only the missing ones computed
        assert len(runs) == 2 and runs[1]["finished"] and not runs[1].get("abandoned")
        assert sorted(digests(out)) == [f"part-{i:05d}.parquet" for i in range(10)]
        assert report.processed == 12 - 2 * len(written)


@pytest.mark.spark
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_spark_adds_to_a_local_output(source, tmp_path):
    pytest.importorskip("pyspark")
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    before = digests(out)
    add_images(source, 7, 3)
    report = imgfeat.extract(source, out, shard_size=3, engine="spark",
                             engine_options={"master": "local[1]"}, **FAST_MODELS)
    assert (report.processed, report.skipped) == (3, 7)
    assert {name: digests(out)[name] for name in before} == before
    assert rows(out).id.is_unique and len(rows(out)) == 10
    assert [r["engine"] for r in manifest(out)["runs"]] == ["local", "spark"]


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
@pytest.mark.filterwarnings("ignore::FutureWarning:ray")
def test_ray_adds_to_a_local_output_and_prunes(source, tmp_path, ray_local):
    out = tmp_path / "out"
    imgfeat.extract(source, out, shard_size=3, **FAST_MODELS)
    before = digests(out)
    add_images(source, 7, 4)
    report = imgfeat.extract(source, out, shard_size=3, engine="ray", **FAST_MODELS)
    assert (report.processed, report.skipped) == (4, 7)
    assert {name: digests(out)[name] for name in before} == before
    assert rows(out).id.is_unique and len(rows(out)) == 11
    (source / "img008.jpg").unlink()
    report = imgfeat.extract(source, out, shard_size=3, engine="ray", prune=True, **FAST_MODELS)
    assert (report.processed, report.pruned) == (0, 1)
    assert rows(out).id.is_unique and len(rows(out)) == 10
    assert not rows(out).path.str.endswith("img008.jpg").any()
    assert [r["engine"] for r in manifest(out)["runs"]] == ["local", "ray", "ray"]
