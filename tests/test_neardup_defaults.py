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


def test_image_index_search_and_serve_use_whole_image_vectors(copies):
    """An index of whole-image vectors built from detect-on features: queries are embedded
    whole (no detection), so a copy finds its original first, in search and in the server."""
    import asyncio

    import imgfeat
    from imgfeat.serve.service import SearchService

    root, names = copies
    index = imgfeat.index(root / "features", root / "image-index", vector="image")
    assert index.crop == "whole-image" and imgfeat.load_index(root / "image-index").crop == "whole-image"
    queries = [str(root / "photos" / f"{Path(n).stem}_copy.jpg") for n in names]
    hits = imgfeat.search(index, queries, k=2)
    first = hits[hits["rank"] == 1]
    # rank 1 is the copy itself (it is indexed); rank 2 its original
    second = hits[hits["rank"] == 2]
    assert (first["score"] > 0.999).all()
    assert [_partner(p) for p in second["path"]] == [Path(n).stem for n in names]
    service = SearchService(index)
    try:
        decoded = service.decode((root / "photos" / "dog_copy.jpg").read_bytes())
        result = asyncio.run(service.search(decoded, 2))
    finally:
        service.close()
    assert result["query"]["crop"] == "full:detect-off"
    assert {_partner(r["path"]) for r in result["results"]} == {"dog"}
