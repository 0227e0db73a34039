import numpy as np
import pytest

from imgfeat.errors import ConfigError
from imgfeat.models.preprocess import InputSpec, letterbox, resize, to_tensor


def _reference(images, spec):
    """to_tensor written step by step, as the definition."""
    batch = np.stack([resize(img, spec.size, spec.interpolation) for img in images]).astype(np.float64)
    batch *= spec.scale
    if spec.mean is not None:
        batch -= np.asarray(spec.mean)
    if spec.std is not None:
        batch /= np.asarray(spec.std)
    return batch.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else batch


@pytest.mark.parametrize("spec", [
    InputSpec(size=(32, 48)),  # ImageNet mean/std, NCHW
    InputSpec(size=(32, 32), layout="NHWC", scale=1.0, mean=None, std=None),
    InputSpec(size=(16, 24), layout="NHWC", scale=1 / 127.5, mean=(1.0, 1.0, 1.0), std=None, interpolation="linear"),
])
def test_to_tensor_matches_the_step_by_step_definition(spec):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (20, 10), (32, 48))]
    tensor = to_tensor(images, spec)
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, _reference(images, spec), rtol=0, atol=1e-5)


def test_resize_shrinks_with_antialiasing_and_enlarges_bilinearly():
    stripes = np.zeros((8, 64, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: averaging gives near-grey, sampling aliases
    assert np.ptp(resize(stripes, (8, 25), "area")) < 70
    assert np.ptp(resize(stripes, (8, 25), "linear")) > 200
    small = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert resize(small, (4, 4), "area").shape == (4, 4, 3)
    with pytest.raises(ConfigError, match="interpolation"):
        InputSpec(size=(4, 4), interpolation="cubic")


def test_letterbox_into_a_float_slot_equals_the_uint8_square():
    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    square, factor = letterbox(image, 64)
    slot = np.zeros((64, 64, 3), dtype=np.float32)
    filled, same_factor = letterbox(image, 64, out=slot)
    assert filled is slot and factor == same_factor == 50 / 64
    np.testing.assert_array_equal(slot, square.astype(np.float32))
    assert not square[39:].any() and square[:38, :64].any()  # 30 * 64/50 = 38.4 -> 38 rows


def test_shrink_by_halves_is_an_exact_box_average_and_stops_under_twice_the_target():
    from imgfeat.models.preprocess import shrink_by_halves

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (101, 64, 3), dtype=np.uint8)
    halved = shrink_by_halves(image, 40, 10)  # rows: 101 -> 50 (odd row dropped); cols 64 -> 32 -> 16
    assert halved.shape == (50, 16, 3)
    blocks = image[:100].astype(np.float64).reshape(50, 2, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(halved - blocks).max() <= 1  # rounding only
    assert shrink_by_halves(image, 60, 40) is image  # nothing is twice its target


def test_area_resize_stays_close_to_opencv_inter_area_on_a_photo():
    import cv2
    from PIL import Image
    from pathlib import Path

    photo = np.asarray(Image.open(Path(__file__).resolve().parent.parent / "samples" / "dog.jpg").convert("RGB"))
    big = cv2.resize(photo, (1024, 768), interpolation=cv2.INTER_CUBIC)
    ours = resize(big, (224, 224), "area").astype(np.int16)
    reference = cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(ours - reference).mean() < 3.0
    assert np.abs(ours - resize(big, (224, 224), "linear")).mean() > np.abs(ours - reference).mean()


def test_an_output_resized_another_way_is_not_resumed(tmp_path, blob_folder):
    import json

    import imgfeat
    from imgfeat.errors import OutputError
    from conftest import FAST_MODELS

    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, shard_size=3, **FAST_MODELS)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model_digests"]["preprocess"] == "halves-v2"
    imgfeat.extract(blob_folder, out, shard_size=3, **FAST_MODELS)  # same version: resumes (nothing to do)
    del manifest["model_digests"]["preprocess"]  # as written before the key existed (INTER_AREA)
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match="resized images another way"):
        imgfeat.extract(blob_folder, out, shard_size=3, **FAST_MODELS)
