"""decode_image never raises: whatever Pillow (or libjpeg-turbo) raises on one file becomes
that file's error row, `unsupported:` or `corrupt:` (issue 10, item 1)."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import imgfeat.decode as decode_module
from imgfeat.config import DecodeConfig
from imgfeat.decode import Decoded, decode_image

from conftest import FAST_MODELS, blob_image


def _png(mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (40, 30), 120).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def _raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


RAISED = [
    (NotImplementedError("unsupported BMP compression"), "unsupported"),
    (MemoryError(), "corrupt"),
    (struct.error("unpack requires a buffer of 4 bytes"), "corrupt"),
    (IndexError("list index out of range"), "corrupt"),
    (KeyError("tile"), "corrupt"),
    (TypeError("an integer is required"), "corrupt"),
    (ZeroDivisionError("division by zero"), "corrupt"),
    (RecursionError("maximum recursion depth exceeded"), "corrupt"),
    (UserWarning("Truncated File Read"), "corrupt"),  # a warning raised as an error
    (ValueError("conversion from YCbCr;16 to RGB not supported"), "unsupported"),
    (Image.DecompressionBombError("too many pixels"), "too-large"),
    (Image.DecompressionBombWarning("too many pixels"), "too-large"),
]


@pytest.mark.parametrize("exc, kind", RAISED, ids=[type(e).__name__ for e, _ in RAISED])
@pytest.mark.parametrize("where", ["open", "load", "convert", "jpeg"])
def test_any_exception_of_one_image_becomes_its_error(monkeypatch, exc, kind, where):
    content = _png("P") if where == "convert" else _jpeg() if where == "jpeg" else _png()
    if where == "open":
        monkeypatch.setattr(Image, "open", _raiser(exc))
    elif where == "load":
        monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", _raiser(exc))
    elif where == "convert":
        monkeypatch.setattr(Image.Image, "convert", _raiser(exc))
    else:
        monkeypatch.setattr(decode_module.simplejpeg, "decode_jpeg", _raiser(exc))
    decoded = decode_image(content, DecodeConfig())
    assert isinstance(decoded, Decoded) and decoded.image is None
    assert decoded.error.startswith(kind + ":"), decoded.error


def test_warnings_as_errors_do_not_escape(monkeypatch):
    """With `warnings.simplefilter("error")`, a warning Pillow emits mid-decode is an error row."""
    def warn_then_load(self, *args, **kwargs):
        warnings.warn("Corrupt EXIF data", UserWarning)
        return original(self, *args, **kwargs)

    original = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", warn_then_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decode_image(_png(), DecodeConfig())
    assert decoded.error.startswith("corrupt:") and "Corrupt EXIF" in decoded.error


def test_bad_exif_is_ignored_not_fatal(monkeypatch):
    monkeypatch.setattr(Image.Image, "getexif", _raiser(struct.error("bad IFD")))
    decoded = decode_image(_png(), DecodeConfig())
    assert decoded.error is None and decoded.image.shape == (30, 40, 3)


def test_one_raising_file_does_not_abort_a_run(monkeypatch, tmp_path):
    """The run finishes with every input a row; the raising file is an `unsupported:` row."""
    import imgfeat

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        blob_image(folder / f"ok{i}.png", offset=i * 5)
    blob_image(folder / "odd.bmp")
    from PIL import BmpImagePlugin

    monkeypatch.setattr(BmpImagePlugin.BmpImageFile, "load",
                        _raiser(NotImplementedError("unsupported BMP compression (4)")))
    report = imgfeat.extract(folder, tmp_path / "out", **FAST_MODELS, shard_size=2)
    frame = imgfeat.read_features(tmp_path / "out").to_pandas()
    assert report.processed == 5 and len(frame) == 5
    odd = frame[frame.path.str.endswith("odd.bmp")]
    assert odd.error.iloc[0].startswith("unsupported:")
    assert (frame.status == "ok").sum() == 4
    assert np.all(frame[frame.status == "ok"].embedding.map(len) > 0)


def test_degenerate_sizes_and_modes_go_through_the_whole_pipeline(tmp_path):
    """1x1, 1x3000, 3000x1, LA and 16-bit images decode, detect, crop and embed: ok rows."""
    import imgfeat

    folder = tmp_path / "odd"
    folder.mkdir()
    for w, h in [(1, 1), (1, 3000), (3000, 1), (2, 2), (7, 1)]:
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / f"s{w}x{h}.png")
    Image.new("LA", (5, 5)).save(folder / "la.png")
    Image.new("I;16", (3, 9)).save(folder / "i16.png")
    report = imgfeat.extract(folder, tmp_path / "out", **FAST_MODELS)
    assert (report.ok, report.failed) == (7, 0)
