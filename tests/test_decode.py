import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgfeat.config import DecodeConfig
from imgfeat.decode import decode_image, orient_array

from conftest import AWKWARD, PHOTOS


def decode_file(name: str, **config):
    return decode_image((AWKWARD / name).read_bytes(), DecodeConfig(**config))


@pytest.mark.parametrize("name", [
    "cmyk.jpg", "gray.png", "gray16.png", "palette_alpha.png", "rgba.png", "la.png",
    "bilevel.tiff", "float.tiff", "animated.gif", "webp.webp", "bmp.bmp", "tiff.tiff",
    "nested/deeper/photo.jpg",
])
def test_odd_formats_and_modes_decode_to_rgb(name):
    decoded = decode_file(name)
    assert decoded.error is None, decoded.error
    with Image.open(AWKWARD / name) as reference:
        size = reference.size
    assert decoded.image.dtype == np.uint8 and decoded.image.ndim == 3 and decoded.image.shape[2] == 3
    assert (decoded.width, decoded.height) == size
    assert decoded.image.shape[:2] == (size[1], size[0])


@pytest.mark.parametrize("name, kind", [
    ("empty.jpg", "empty"), ("truncated.jpg", "corrupt"), ("random_bytes.jpg", "not-an-image"),
    ("text_named.jpg", "not-an-image"), ("notes.txt", "not-an-image"),
    ("bomb.png", "too-large"), ("bomb_header.jpg", "too-large"),
])
def test_bad_files_become_errors_with_a_reason(name, kind):
    decoded = decode_file(name)
    assert decoded.image is None
    assert decoded.error.startswith(kind + ":"), decoded.error


def test_pixel_cap_is_ours_not_only_pillows():
    decoded = decode_file("tiff.tiff", max_pixels=100)
    assert decoded.error.startswith("too-large:") and "cap 100" in decoded.error


def test_sixteen_bit_gray_is_scaled_not_clipped():
    image = decode_file("gray16.png").image[:, :, 0].astype(int)
    # a horizontal ramp 0..65535 must stay a ramp 0..255, not saturate at 255 after 1/256 of it
    assert image[:, 0].max() < 10 and image[:, -1].min() > 245
    assert np.all(np.diff(image[0]) >= 0) and len(np.unique(image[0])) > 30


def test_transparency_is_composited_on_white():
    image = decode_file("rgba.png").image
    assert (image[:, :8] == 255).all()  # the left half is fully transparent


def test_animated_gif_uses_first_frame():
    image = decode_file("animated.gif").image.reshape(-1, 3).astype(int)
    assert np.abs(image.mean(axis=0) - [255, 0, 0]).max() < 8


def test_exif_orientation_is_applied():
    decoded = decode_file("exif_rotated.jpg")
    assert (decoded.width, decoded.height) == (80, 120)
    top_left = decoded.image[:20, :20].reshape(-1, 3).mean(axis=0)
    assert top_left[2] > 150 and top_left[0] < 100  # blue, not the stored red


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_array_matches_pillow(orientation):
    base = np.random.default_rng(orientation).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(base)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert np.array_equal(orient_array(base, orientation), expected)
    assert np.array_equal(decode_image(buffer.getvalue()).image, expected)


def test_jpeg_is_decoded_at_reduced_scale_but_reports_full_size():
    content = (PHOTOS / "dog.jpg").read_bytes()
    with Image.open(PHOTOS / "dog.jpg") as opened:
        full = opened.convert("RGB")
    decoded = decode_image(content, DecodeConfig(max_side=200))
    assert (decoded.width, decoded.height) == full.size
    assert 200 <= max(decoded.image.shape[:2]) < max(full.size)
    sx, sy = decoded.scale
    assert sx == pytest.approx(full.size[0] / decoded.image.shape[1])
    # the reduced decode looks like a resize of the full image
    reference = np.asarray(full.resize(decoded.image.shape[1::-1], Image.BILINEAR), dtype=float)
    assert np.abs(decoded.image.astype(float) - reference).mean() < 8


def test_fast_jpeg_path_matches_pillow():
    content = (PHOTOS / "horses.jpg").read_bytes()
    decoded = decode_image(content, DecodeConfig(max_side=0)).image.astype(float)
    with Image.open(PHOTOS / "horses.jpg") as opened:
        reference = np.asarray(opened.convert("RGB"), dtype=float)
    assert decoded.shape == reference.shape
    assert np.abs(decoded - reference).mean() < 2
