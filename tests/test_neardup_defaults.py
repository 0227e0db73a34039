"""`imgfeat dedup` with its defaults finds the copies users mean: a resized, re-encoded copy of
every sample photo is grouped with its original (the whole-image vector; the main object may
flip between copies on near-ties, so the object vector alone missed some)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLES
from imgfeat.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("copies")
    photos = root / "photos"
    photos.mkdir()
    names = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    for name in names:
        shutil.copy(SAMPLES / name, photos / name)
        with Image.open(SAMPLES / name) as image:  # half size, JPEG quality 40
            image.convert("RGB").resize((image.width // 2, image.height // 2)).save(
                photos / f"{Path(name).stem}_copy.jpg", quality=40)
    assert main(["extract", str(photos), "-o", str(root / "features"), "--no-progress"]) == 0
    return root, names


def _partner(path: str) -> str:
    return Path(path).stem.removesuffix("_copy")


def test_default_dedup_groups_every_copy_with_its_original(copies, capsys):
    root, names = copies
    out = root / "groups.parquet"
    assert main(["dedup", str(root / "features"), "-o", str(out)]) == 0
    groups = pd.read_parquet(out)
    found = {stem for stem, members in groups.groupby(groups["path"].map(_partner))
             if members["group"].nunique() == 1 and len(members) == 2}
    assert found == {Path(n).stem for n in names}
    # and no photo is grouped with another photo's copy
    for _, members in groups.groupby("group"):
        assert members["path"].map(_partner).nunique() == 1, members["path"].tolist()
