"""A real `imgfeat extract` process killed with SIGKILL mid-run, then rerun: every input
exactly once, the same ids as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLES

pytestmark = pytest.mark.slow


def make_inputs(folder: Path, count: int) -> None:
    folder.mkdir()
    photos = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        with Image.open(path) as opened:
            photos.append(opened.convert("RGB"))
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        photo.crop((x, y, x + w // 2, y + h // 2)).resize((160, 120)).save(folder / f"{i:04d}.jpg", quality=85)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")


def command(src: Path, out: Path) -> list[str]:
    # the real embedder without detection: fast enough to finish, slow enough to be killed mid-run
    return [sys.executable, "-m", "imgfeat.cli", "extract", str(src), "-o", str(out),
            "--no-detect", "--shard-size", "40", "--workers", "1", "--no-progress"]


def test_sigkill_then_rerun_gives_every_input_exactly_once(tmp_path):
    src, out, reference = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    make_inputs(src, 600)
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command(src, out), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
        assert process.poll() is None, (tmp_path / "killed.log").read_text()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its decode workers
    process.wait()
    log.close()
    written = len(list(out.glob("part-*.parquet")))
    assert 2 <= written < 16, f"kill came too late: {written} of 16 shards written"
    assert not (out / "_manifest.json").read_text().count('"complete": true')

    rerun = subprocess.run(command(src, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done, skipped" in rerun.stdout
    full = subprocess.run(command(src, reference), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr

    resumed, uninterrupted = pd.read_parquet(out), pd.read_parquet(reference)
    assert len(resumed) == 601 and resumed.id.is_unique
    assert sorted(resumed.id) == sorted(uninterrupted.id)
    assert (resumed.status == "error").sum() == 1
    assert not list(out.glob(".*"))  # no temporary files left
