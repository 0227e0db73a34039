"""CenterNet MobileNetV3 detector: the committed ONNX + the numpy decoding.

The ONNX-running tests use real photos (darknet's sample images, see
tests/data/photos/SOURCES.md). Preprocessing here is deliberately plain:
letterbox (aspect kept, top-left, zero padding) to 512x512 RGB float32 0..255,
NHWC; on the sample photos it scores at least as well as a stretch resize.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

try:
    from imgfeat.models import centernet
except ImportError:  # running from a checkout without installing
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from imgfeat.models import centernet

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "src" / "imgfeat" / "models" / "weights" / centernet.WEIGHTS_FILE
PHOTOS = Path(__file__).resolve().parent / "data" / "photos"


# ----------------------------------------------------------------- pure numpy

def test_constants():
    assert len(centernet.COCO_LABELS) == 80 == len(set(centernet.COCO_LABELS))
    assert centernet.COCO_LABELS[1] == "bicycle"
    assert centernet.COCO_LABELS[16] == "dog"
    assert centernet.COCO_LABELS[17] == "horse"
    assert centernet.INPUT_SIZE == 512
    assert centernet.OUTPUT_NAMES == ("keypoints", "wh")


def test_decode_synthetic():
    heat = np.zeros((2, 128, 128, 80), np.float32)
    wh = np.zeros((2, 128, 128, 4), np.float32)
    heat[0, 10, 20, 16] = 0.9          # dog at cell (x=20, y=10)
    heat[0, 10, 21, 16] = 0.5          # suppressed by the 3x3 max-pool
    heat[0, 50, 60, 1] = 0.7           # bicycle
    wh[0, 10, 20] = (8, 4, 12, 16)     # left, top, right, bottom in pixels
    wh[0, 50, 60] = (1, 2, 3, 4)
    out = centernet.decode({"keypoints": heat, "wh": wh}, max_detections=5)
    assert len(out) == 2 and all(o.dtype == np.float32 for o in out)
    assert out[0].shape == (5, 6) and out[1].shape == (5, 6)
    np.testing.assert_allclose(out[0][0], [80 - 8, 40 - 4, 80 + 12, 40 + 16, 0.9, 16])
    np.testing.assert_allclose(out[0][1], [240 - 1, 200 - 2, 240 + 3, 200 + 4, 0.7, 1])
    assert np.all(out[0][2:, 4] == 0)
    assert np.all(np.diff(out[0][:, 4]) <= 0)
    # list input == dict input; threshold drops rows
    same = centernet.decode([heat, wh], max_detections=5)
    np.testing.assert_array_equal(same[0], out[0])
    kept = centernet.decode([heat, wh], score_threshold=0.6)
    assert [len(k) for k in kept] == [2, 0]


# ------------------------------------------------------- ONNX on real photos

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("floor", [0.05, 0.3, 0.9])
def test_threshold_gives_the_full_decoding_filtered(seed, floor):
    # the thresholded path looks only at values >= floor; it must return exactly the rows
    # of the full top-k decoding that reach the floor, ties and borders included
    rng = np.random.default_rng(seed)
    heat = rng.random((2, 32, 32, 80), dtype=np.float32) ** 6
    heat[0, 0, 0, 3] = heat[0, 0, 1, 3] = 0.95  # a tie on the border
    wh = rng.uniform(0, 20, (2, 32, 32, 4)).astype(np.float32)
    full = centernet.decode([heat, wh], max_detections=100)
    cut = centernet.decode([heat, wh], max_detections=100, score_threshold=floor)
    for f, c in zip(full, cut):
        np.testing.assert_array_equal(c, f[f[:, 4] >= floor])
    assert sum(len(c) for c in cut) > 0


def _letterbox(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        size = centernet.INPUT_SIZE
        scale = size / max(im.size)
        w, h = round(im.width * scale), round(im.height * scale)
        arr = np.zeros((size, size, 3), np.float32)
        arr[:h, :w] = np.asarray(im.resize((w, h), Image.BILINEAR), np.float32)
    return arr, scale


@pytest.fixture(scope="module")
def session():
    ort = pytest.importorskip("onnxruntime")
    if not MODEL.exists():
        pytest.skip(f"{MODEL} missing (scripts/convert_centernet.sh rebuilds it)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def photos():
    return [_letterbox(PHOTOS / n) for n in ("dog.jpg", "horses.jpg")]


def _run(session, batch: np.ndarray) -> list[np.ndarray]:
    outs = session.run(list(centernet.OUTPUT_NAMES), {centernet.INPUT_NAME: batch})
    return centernet.decode(outs)


def _named(det: np.ndarray, min_score: float) -> list[str]:
    return [centernet.COCO_LABELS[int(c)] for c in det[det[:, 4] > min_score, 5]]


@pytest.mark.slow
def test_model_io(session):
    inp = session.get_inputs()[0]
    assert inp.name == centernet.INPUT_NAME
    # batch, height and width are symbolic (any multiple of 32: scripts/centernet_symbolic_hw.py)
    assert inp.shape[3] == 3 and all(isinstance(d, str) for d in inp.shape[:3])
    assert [o.name for o in session.get_outputs()] == list(centernet.OUTPUT_NAMES)


@pytest.mark.slow
def test_batch_of_two_photos(session, photos):
    batch = np.stack([p[0] for p in photos])
    dog, horses = _run(session, batch)
    assert dog.shape == (100, 6) and horses.shape == (100, 6)

    top_dog = _named(dog[:6], 0.3)
    assert "dog" in top_dog and "bicycle" in top_dog, top_dog
    assert _named(horses, 0.3).count("horse") >= 2, _named(horses, 0.3)

    # boxes scaled back to the photo: dog.jpg (640x480) has the dog bottom-left
    scale = photos[0][1]
    d = dog[dog[:, 5] == centernet.COCO_LABELS.index("dog")][0, :4] / scale
    cx, cy = (d[0] + d[2]) / 2, (d[1] + d[3]) / 2
    assert 0 <= d[0] < d[2] <= 640 + 8 and 0 <= d[1] < d[3] <= 480 + 8, d
    assert cx < 320 and cy > 240, d


@pytest.mark.slow
def test_batch_equals_single(session, photos):
    batch = np.stack([p[0] for p in photos])
    batched = _run(session, batch)
    for i, (img, _) in enumerate(photos):
        single = _run(session, img[None])[0]
        b = batched[i]
        keep = single[:, 4] > 0.05  # the low tail may reorder on near-ties
        n = int(keep.sum())
        assert n > 0
        np.testing.assert_array_equal(b[:n, 5], single[:n, 5])
        np.testing.assert_allclose(b[:n, :4], single[:n, :4], atol=1e-2)
        np.testing.assert_allclose(b[:n, 4], single[:n, 4], atol=1e-4)
