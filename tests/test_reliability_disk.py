"""A full disk (issue 10, item 4): extract, dedup, index and train-hash writing onto a small
tmpfs that fills up (ENOSPC), or, where tmpfs cannot be mounted, under RLIMIT_FSIZE (EFBIG).
Each command exits 1 with one line `imgfeat: error: ...` and a hint, leaves no partial or
temporary file, and the previous good output is byte for byte intact; once there is room,
rerunning the same command finishes the job."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import imgfeat

from conftest import FAST_MODELS, blob_image

FAST = ["--detector", "test-blob", "--embedder", "test-tiny", "--workers", "0", "--no-progress"]


class SmallDisk:
    """A folder where writes fail for lack of room.

    mode "tmpfs": a 4 MiB tmpfs; `fill()` leaves `room` bytes free (real ENOSPC).
    mode "fsize": a plain folder; commands run with RLIMIT_FSIZE = `room` (EFBIG on a larger file).
    """

    def __init__(self, path: Path, mode: str, room: int = 8192):
        self.path, self.mode, self.room = path, mode, room
        self.ballast = path / "ballast.bin"

    def fill(self) -> None:
        if self.mode == "tmpfs":
            stats = os.statvfs(self.path)
            free = stats.f_bavail * stats.f_frsize
            with open(self.ballast, "ab") as fh:
                fh.write(bytes(max(0, free - self.room)))

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)
        self._freed = True

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(Path(imgfeat.__file__).parent.parent))
        room = self.room if (self.mode == "fsize" and not self._freed) else None

        def limit() -> None:
            if room is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

        return subprocess.run([sys.executable, "-m", "imgfeat.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, preexec_fn=limit)

    _freed = False


@pytest.fixture(params=["tmpfs", "fsize"])
def disk(request, tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    if request.param == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}; "
                        "the fsize variant covers the same paths")
    try:
        yield SmallDisk(path, request.param)
    finally:
        if request.param == "tmpfs":
            subprocess.run(["umount", str(path)], check=False)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    src = root / "photos"
    src.mkdir()
    for i in range(40):
        blob_image(src / f"p{i:02d}.jpg", offset=(i % 8) * 5, size=(160, 120))
    imgfeat.extract(src, root / "features", **FAST_MODELS, shard_size=10)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but the ballast) and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "ballast.bin"}


def assert_clean_failure(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgfeat: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert any(hint in lines[0] for hint in ("disk is full", "grew over the size")), lines[0]


def good_dedup(features: Path, out: Path) -> None:
    from imgfeat.retrieval.dedup import find_duplicates, write_groups
    from imgfeat.retrieval.report import write_report

    groups = find_duplicates(str(features / "features"), 0.9)
    write_groups(groups, out / "groups.parquet")
    write_report(groups, out / "report.html")


def good_hash(features: Path, out: Path) -> None:
    from imgfeat.hashtrain import train_hash

    train_hash(features / "features", out / "hash.npz", bits=64, method="rproj", views=0)


COMMANDS = {  # name: (the previous good output, made in this process; the command to fail)
    "dedup": (good_dedup, lambda f, out: ["dedup", str(f / "features"), "-o", str(out / "groups.parquet"),
                                          "--html", str(out / "report.html"), "--threshold", "0.5"]),
    "index": (lambda f, out: imgfeat.index(f / "features", out / "index"),
              lambda f, out: ["index", str(f / "features"), "-o", str(out / "index")]),
    "train-hash": (good_hash, lambda f, out: ["train-hash", str(f / "features"), "-o", str(out / "hash.npz"),
                                              "--method", "rproj", "--views", "0", "--bits", "128",
                                              "--seed", "7", "--no-progress"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_full_disk_keeps_the_previous_output_and_leaves_no_partial_file(disk, features, name):
    make_good, command = COMMANDS[name]
    make_good(features, disk.path)
    before = snapshot(disk.path)
    assert before

    disk.fill()
    assert_clean_failure(disk.run(*command(features, disk.path)))
    assert snapshot(disk.path) == before  # intact, and no temporary file or folder left
    assert not [p for p in disk.path.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_full_disk_during_extract_then_resume(disk, features, tmp_path):
    src = features / "photos"
    good = disk.path / "good"
    imgfeat.extract(src, good, **FAST_MODELS, shard_size=10)
    before = snapshot(good)
    disk.room = 4096  # fsize: the manifest (~3 KB) fits, a shard (~7 KB) does not

    disk.fill()
    out = disk.path / "out"
    assert_clean_failure(disk.run("extract", str(src), "-o", str(out), "--shard-size", "10", *FAST))
    assert snapshot(good) == before
    assert not [p for p in disk.path.rglob("*") if ".tmp-" in p.name]
    partial = sorted(p.name for p in out.glob("part-*")) if out.exists() else []
    assert len(partial) < 4  # it stopped; what it kept are whole shards
    for name in partial:
        assert imgfeat.read_features(out / name).to_pandas().shape[0] == 10

    disk.free()
    done = disk.run("extract", str(src), "-o", str(out), "--shard-size", "10", *FAST)
    assert done.returncode == 0, done.stderr
    resumed = imgfeat.read_features(out).to_pandas()
    reference = imgfeat.read_features(good).to_pandas()
    assert resumed.id.tolist() == reference.id.tolist() and resumed.id.is_unique


def test_cleaning_temporaries_tolerates_one_renamed_away_meanwhile(tmp_path, monkeypatch):
    # a worker of a failed Beam/Spark run may still rename its temporary into place while the
    # next plan cleans up: the file listed a moment ago is gone, and that is not an error
    from imgfeat.sinks import ParquetSink

    sink = ParquetSink(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    gone, left = ".part-00003.parquet.tmp-b46d4a97", ".part-00004.parquet.tmp-0123abcd"
    (tmp_path / "out" / left).write_bytes(b"half")
    monkeypatch.setattr(sink, "_names", lambda: [gone, left])
    sink.clean_temporary()
    assert not (tmp_path / "out" / left).exists()
