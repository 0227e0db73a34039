"""Shared fixtures. Fast tests use the registry's tiny "test-*" models; tests marked `slow`
run the real default models on real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).parent / "data"
AWKWARD = DATA / "awkward"
PHOTOS = DATA / "photos"
SAMPLES = Path(__file__).parent.parent / "samples"

FAST_MODELS = {"detector": "test-blob", "embedder": "test-tiny", "workers": 0, "progress": False}


def blob_image(path: Path, offset: int = 0, colour=(200, 30, 30), size=(300, 200)) -> Path:
    """A plain white image with one coloured rectangle: test-blob finds exactly that box."""
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    image[50:120, 30 + offset:150 + offset] = colour
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def blob_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "blobs"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        blob_image(folder / f"img{i}.jpg", offset=i * 10)
    blob_image(folder / "sub" / "deep.png", offset=5, colour=(20, 160, 40))
    return folder


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Good images, every awkward file, and a dangling symlink."""
    folder = tmp_path / "mixed"
    shutil.copytree(AWKWARD, folder, ignore=shutil.ignore_patterns("README.md"))
    for i in range(3):
        blob_image(folder / f"good{i}.jpg", offset=i * 10)
    (folder / "dangling.jpg").symlink_to(tmp_path / "does-not-exist.jpg")
    return folder


@pytest.fixture(scope="module")
def spark_session():
    """A local Spark session (2 cores, 4 shuffle partitions) for the module, or the one running."""
    pytest.importorskip("pyspark")
    from imgfeat.runners.spark import spark_session as session_of

    session, created = session_of("local[2]")
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield session
    if created:
        session.stop()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for the module (2 CPUs), or the one already running."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
