"""Trust the output (issue 10): one odd input never ends a run, imgfeat deletes only its own
files, outputs never overlap inputs, a failed write leaves nothing half-written, the error
budget stops early and gives the same verdict on a rerun, --retry-errors repairs in place."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import imgfeat
import imgfeat.sinks as sinks_module
import imgfeat.storage as storage_module
from imgfeat.cli import main
from imgfeat.errors import ConfigError, OutputError, TooManyErrors
from imgfeat.storage import ReadFailure

from conftest import FAST_MODELS, blob_image

CLI_FAST = ["--detector", "test-blob", "--embedder", "test-tiny", "--workers", "0", "--no-progress"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`imgfeat ...` in a subprocess (with this checkout first on the path), killed after `timeout`."""
    env = dict(os.environ, PYTHONPATH=str(Path(imgfeat.__file__).parent.parent))
    return subprocess.run([sys.executable, "-m", "imgfeat.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


def images(folder: Path, count: int, broken: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        blob_image(folder / f"img{i:03d}.png", offset=i % 40, size=(120, 90))
    for i in range(broken):
        (folder / f"broken{i:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" + bytes([i]))
    return folder


# --- non-regular files and size caps ------------------------------------------------------

def test_fifo_and_dev_zero_link_become_read_errors_and_the_run_finishes(tmp_path):
    src = images(tmp_path / "in", 3)
    os.mkfifo(src / "x.jpg")  # no writer: a blocking open or read would hang forever
    (src / "zero.jpg").symlink_to("/dev/zero")  # never ends: reading it all would exhaust memory
    done = cli("extract", str(src), "-o", str(tmp_path / "out"), *CLI_FAST, timeout=60)
    assert done.returncode == 0, done.stderr
    frame = imgfeat.read_features(tmp_path / "out").to_pandas().set_index("path")
    assert len(frame) == 5
    fifo, zero = frame.loc[str(src / "x.jpg")], frame.loc[str(src / "zero.jpg")]
    assert fifo.error.startswith("read-error:") and "FIFO" in fifo.error
    assert zero.error.startswith("read-error:") and "character device" in zero.error
    assert (frame.status == "ok").sum() == 3


def test_file_over_max_bytes_is_a_too_large_row(tmp_path):
    src = images(tmp_path / "in", 2)
    (src / "big.jpg").write_bytes(b"\xff\xd8" + bytes(50_000))
    imgfeat.extract(src, tmp_path / "out", **FAST_MODELS, max_bytes=20_000)
    frame = imgfeat.read_features(tmp_path / "out").to_pandas().set_index("path")
    assert frame.loc[str(src / "big.jpg")].error.startswith("too-large:")
    assert (frame.status == "ok").sum() == 2


def test_read_never_takes_more_than_max_bytes_plus_one(tmp_path, monkeypatch):
    """A file that grows while read (fstat said small) is cut at max_bytes + 1 and refused."""
    path = tmp_path / "growing.jpg"
    path.write_bytes(bytes(100))
    asked = []
    real = storage_module._read_at_most

    def spy(fh, limit):
        asked.append(limit)
        return real(fh, limit)

    monkeypatch.setattr(storage_module, "_read_at_most", spy)
    assert storage_module.read_bytes(str(path), 1000) == bytes(100)
    assert asked == [1001]
    with pytest.raises(ReadFailure) as failure:
        storage_module.read_bytes(str(path), 50)
    assert failure.value.kind == "too-large"


# --- --overwrite deletes only imgfeat's own files -------------------------------------------

def test_overwrite_refuses_a_folder_imgfeat_did_not_write(tmp_path):
    src = images(tmp_path / "in", 2)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.docx").write_bytes(b"years of work")
    (documents / "part-00000.parquet").write_bytes(b"not ours either: no manifest")
    with pytest.raises(OutputError, match="did not write"):
        imgfeat.extract(src, documents, **FAST_MODELS, overwrite=True)
    done = cli("extract", str(src), "-o", str(documents), "--overwrite", *CLI_FAST)
    assert done.returncode == 1 and done.stderr.startswith("imgfeat: error:") and len(done.stderr.splitlines()) == 1
    assert sorted(p.name for p in documents.iterdir()) == ["part-00000.parquet", "thesis.docx"]
    assert (documents / "thesis.docx").read_bytes() == b"years of work"


def test_overwrite_of_an_imgfeat_output_deletes_only_its_files(tmp_path):
    src = images(tmp_path / "in", 5)
    out = tmp_path / "out"
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=2)
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "part-00009.parquet").write_bytes(b"in a subfolder: not imgfeat's")
    (out / "part-00007.parquet").write_bytes(b"a stale shard of an old run")  # imgfeat's name: removed
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=3, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_manifest.json", "notes.txt", "part-00000.parquet", "part-00001.parquet", "sub"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "part-00009.parquet").exists()
    assert json.loads((out / "_manifest.json").read_text())["shard_size"] == 3


def test_a_different_run_error_does_not_suggest_deleting_foreign_files(tmp_path):
    src = images(tmp_path / "in", 3)
    out = tmp_path / "out"
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=2)
    with pytest.raises(OutputError) as error:
        imgfeat.extract(src, out, **FAST_MODELS, shard_size=3)
    assert "only imgfeat's own files" in str(error.value)


@pytest.mark.parametrize("where", ["equal", "inside", "contains", "symlink"])
def test_output_overlapping_the_source_is_refused(tmp_path, where):
    root = tmp_path / "photos"
    src = images(root / "album", 2) if where == "contains" else images(root, 2)
    source_arg = src
    output = {"equal": root, "inside": root / "features", "contains": root, "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        (tmp_path / "link").symlink_to(root)
    before = sorted(p.name for p in src.rglob("*"))
    with pytest.raises(ConfigError, match="overlaps|holds the input"):
        imgfeat.extract(source_arg, output, **FAST_MODELS, overwrite=True)
    done = cli("extract", str(source_arg), "-o", str(output), "--overwrite", *CLI_FAST)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("imgfeat: error:") and len(done.stderr.splitlines()) == 1
    assert sorted(p.name for p in src.rglob("*")) == before


def test_list_file_inputs_inside_the_output_are_refused(tmp_path):
    src = images(tmp_path / "out" / "photos", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(src.iterdir())))
    with pytest.raises(ConfigError, match="holds the input"):
        imgfeat.extract(listing, tmp_path / "out", **FAST_MODELS)


# --- a failed write leaves nothing behind ------------------------------------------------------

def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    src = images(tmp_path / "in", 6)
    out = tmp_path / "out"
    calls = []
    real = pq.write_table

    def full_disk(table, where, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second shard: half a file, then the disk is full
            where.write(b"PAR1 half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kwargs)

    monkeypatch.setattr(sinks_module.pq, "write_table", full_disk)
    code = main(["extract", str(src), "-o", str(out), "--shard-size", "2", *CLI_FAST])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("imgfeat: error: No space left on device")
    assert "rerun the same command to resume" in error and len(error.splitlines()) == 1
    assert temporary_files(out) == []
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet"]
    assert pq.read_table(out / "part-00000.parquet").num_rows == 2

    monkeypatch.undo()
    assert main(["extract", str(src), "-o", str(out), "--shard-size", "2", *CLI_FAST]) == 0
    assert imgfeat.read_features(out).to_pandas().id.is_unique
    assert len(imgfeat.read_features(out).to_pandas()) == 6


# --- the error budget ----------------------------------------------------------------------------

def test_max_error_ratio_stops_early_and_a_rerun_gives_the_same_verdict(tmp_path, capsys):
    src = tmp_path / "in"
    images(src, 20, broken=180)  # broken* sort first: the budget is spent in the first shards
    out = tmp_path / "out"
    seen = []
    with pytest.raises(TooManyErrors):
        imgfeat.extract(src, out, **FAST_MODELS, shard_size=10, max_error_ratio=0.2, min_error_count=20,
                        on_progress=lambda done, failed, todo: seen.append(done))
    processed = sum(seen)
    assert 20 <= processed <= 40, processed  # stopped at the first check past min_error_count
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["last_run"]["aborted"] is True and manifest["complete"] is False
    assert len(list(out.glob("part-*.parquet"))) < 20

    # the same output finished without a budget, then judged again: the verdict is the output's
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=10)
    codes = [main(["extract", str(src), "-o", str(out), "--shard-size", "10", "--max-error-ratio", "0.2",
                   *CLI_FAST]) for _ in range(2)]
    errors = capsys.readouterr().err.splitlines()
    assert codes == [1, 1]
    assert len(errors) == 2 and errors[0] == errors[1] and "180 of 200 images failed in the output" in errors[0]
    assert main(["extract", str(src), "-o", str(out), "--shard-size", "10", "--max-error-ratio", "0.95",
                 *CLI_FAST]) == 0


# --- --retry-errors ------------------------------------------------------------------------------

def test_retry_errors_recomputes_only_transient_failures_in_place(tmp_path, monkeypatch):
    src = images(tmp_path / "in", 9, broken=2)
    out = tmp_path / "out"
    flaky = {str(src / "img001.png"): "unreachable", str(src / "img004.png"): "timeout",
             str(src / "img008.png"): "unreachable"}
    real = storage_module._read_local
    reads: list[str] = []

    def read(path, max_bytes):
        reads.append(path)
        if path in flaky:
            raise ReadFailure(flaky[path], "injected")
        return real(path, max_bytes)

    monkeypatch.setattr(storage_module, "_read_local", read)
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=4, retries=1)
    first = imgfeat.read_features(out).to_pandas()
    assert sorted(first.error.dropna().str.split(":").str[0]) == ["corrupt", "corrupt", "timeout",
                                                                    "unreachable", "unreachable"]
    shard_names = sorted(p.name for p in out.glob("part-*"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}

    flaky.clear()
    reads.clear()
    report = imgfeat.extract(src, out, **FAST_MODELS, shard_size=4, retries=1, retry_errors=True)
    assert sorted(reads) == sorted([str(src / "img001.png"), str(src / "img004.png"), str(src / "img008.png")])
    assert report.retried == 3 and report.failed == 0
    second = imgfeat.read_features(out).to_pandas()
    assert list(second.id) == list(first.id) and second.id.is_unique  # in place, row order kept
    assert sorted(second.error.dropna().str.split(":").str[0]) == ["corrupt", "corrupt"]
    assert (second.status == "ok").sum() == 9
    assert sorted(p.name for p in out.glob("part-*")) == shard_names and temporary_files(out) == []
    untouched = [n for n in shard_names if n not in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")]
    assert all(mtimes[n] == (out / n).stat().st_mtime_ns for n in untouched)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sum(s["failed"] for s in manifest["shards"].values()) == 2

    reads.clear()  # nothing transient left: a second --retry-errors reads nothing
    assert imgfeat.extract(src, out, **FAST_MODELS, shard_size=4, retry_errors=True).retried == 0
    assert reads == []


def test_a_failed_write_ends_the_run_instead_of_hanging_it(tmp_path, monkeypatch):
    """The writer thread failed on the first shard while the main thread kept queueing shards:
    the queue filled and `close()` blocked forever (found by the full-disk test)."""
    import threading
    import time

    src = images(tmp_path / "in", 12)
    real = sinks_module.ParquetSink.write_shard

    def failing(self, shard, table):
        if shard.index == 0:
            time.sleep(0.3)  # the main thread fills the queue meanwhile
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, shard, table)

    monkeypatch.setattr(sinks_module.ParquetSink, "write_shard", failing)
    outcome = []

    def run():
        try:
            imgfeat.extract(src, tmp_path / "out", **FAST_MODELS, shard_size=1)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the run hung after a failed shard write"
    assert outcome and outcome[0].errno == errno.ENOSPC


# --- every file imgfeat writes is written whole or not at all ---------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".onnx"])
def test_hash_files_are_written_atomically(tmp_path, monkeypatch, suffix):
    import numpy as np

    import imgfeat.storage
    from imgfeat.models.learned_hash import load_hasher, save_hasher

    if suffix == ".onnx":
        pytest.importorskip("onnx", reason="writing .onnx hash files needs onnx")
    rng = np.random.default_rng(0)
    path = tmp_path / f"hash{suffix}"
    save_hasher(path, rng.normal(size=(16, 64)), np.zeros(64), "rproj")
    before = path.read_bytes()
    assert load_hasher(path, 16).bits == 64

    def fail_rename(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imgfeat.storage.os, "replace", fail_rename)
    with pytest.raises(OSError):
        save_hasher(path, rng.normal(size=(16, 128)), np.zeros(128), "rproj")
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_eval_json_out_is_written_atomically(tmp_path, monkeypatch, capsys):
    import imgfeat.evaluate

    target = tmp_path / "results" / "out.json"
    monkeypatch.setattr(imgfeat.evaluate, "run_neardup", lambda settings, log=None: {"top1": 0.5})
    assert main(["eval", "neardup", "--photos", str(tmp_path), "--json-out", str(target), "--json"]) == 0
    assert json.loads(target.read_text()) == {"top1": 0.5}
    monkeypatch.setattr(imgfeat.storage.os, "replace",
                        lambda src, dst: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert main(["eval", "neardup", "--photos", str(tmp_path), "--json-out", str(target), "--json"]) == 1
    assert "disk is full" in capsys.readouterr().err
    assert json.loads(target.read_text()) == {"top1": 0.5} and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_only_imgfeat_temporary_names_are_imgfeat_files(tmp_path):
    """A user's hidden ".x.tmp-..." file survives --overwrite; a write check left by a kill
    during start-up does not block the rerun."""
    src = images(tmp_path / "in", 3)
    out = tmp_path / "out"
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=2)
    mine = [".notes.tmp-1a2b3c4d", ".thesis.docx.tmp-mine", ".tmp-"]
    for name in mine:
        (out / name).write_text("user data")
    (out / ".part-00000.parquet.tmp-0badf00d").write_bytes(b"half a shard")
    imgfeat.extract(src, out, **FAST_MODELS, shard_size=3, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(mine + ["_manifest.json", "part-00000.parquet"])

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".imgfeat-write-check").write_bytes(b"")
    (fresh / "..imgfeat-write-check.tmp-12345678").write_bytes(b"")
    imgfeat.extract(src, fresh, **FAST_MODELS)
    assert sorted(p.name for p in fresh.iterdir()) == ["_manifest.json", "part-00000.parquet"]


def test_remote_output_inside_a_remote_source_is_refused(tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    blob_image(tmp_path / "a.png")
    memory.pipe_file("/imgfeat-overlap/photos/a.png", (tmp_path / "a.png").read_bytes())
    for output in ("memory://imgfeat-overlap/photos/features", "memory://imgfeat-overlap/photos",
                   "memory://imgfeat-overlap"):
        with pytest.raises(ConfigError, match="overlaps"):
            imgfeat.extract("memory://imgfeat-overlap/photos", output, **FAST_MODELS)
    assert memory.find("/imgfeat-overlap") == ["/imgfeat-overlap/photos/a.png"]
    imgfeat.extract("memory://imgfeat-overlap/photos", "memory://imgfeat-overlap-features", **FAST_MODELS)
    memory.rm("/imgfeat-overlap", recursive=True)
    memory.rm("/imgfeat-overlap-features", recursive=True)


def test_a_review_that_cannot_be_written_leaves_the_file_whole(tmp_path, monkeypatch):
    from imgfeat.retrieval.reviews import load_reviews, save_review

    path = tmp_path / "reviews.jsonl"
    save_review(path, ["a", "b"], "not-duplicate")
    before = path.read_bytes()
    monkeypatch.setattr(storage_module.os, "replace",
                        lambda src, dst: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        save_review(path, ["c", "d"], "not-duplicate")
    monkeypatch.undo()
    assert path.read_bytes() == before and [r["ids"] for r in load_reviews(path)] == [["a", "b"]]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_failed_index_swap_puts_the_previous_index_back(tmp_path, monkeypatch):
    """Replacing an index folder renames the old one aside, then the new one in; when the
    second rename fails, the old one must be back under its name, not left hidden."""
    import imgfeat.retrieval.index_files as index_files

    src = images(tmp_path / "in", 6)
    imgfeat.extract(src, tmp_path / "features", **FAST_MODELS)
    target = tmp_path / "index"
    imgfeat.index(tmp_path / "features", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = os.replace

    def second_fails(src_path, dst_path):
        if os.path.basename(str(src_path)).startswith(".index.tmp-"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src_path, dst_path)

    monkeypatch.setattr(index_files.os, "replace", second_fails)
    with pytest.raises(OSError):
        imgfeat.index(tmp_path / "features", target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "in", "index"]
    assert len(imgfeat.load_index(target)) == 6
