"""Small JPEG pictures of indexed images (the HTML report, the web service): one way to make them.

    jpeg = thumbnail_jpeg(content, box=[x1, y1, x2, y2], side=160)   # or ThumbnailError(reason)

The box is in full-resolution pixels (as the output's `box` column); the image is decoded at a
reduced size (a few times the thumbnail) with the usual pixel cap, so a thumbnail of a huge
photo costs little and a decompression bomb is refused.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .config import DEFAULT_MAX_PIXELS, DecodeConfig
from .decode import decode_image
from .storage import ReadFailure, read_bytes


class ThumbnailError(Exception):
    """Why a thumbnail could not be made (the decode or read error reason)."""


def _crop_to_box(image: np.ndarray, box: Any, scale: tuple[float, float]) -> np.ndarray:
    if box is None or len(box) != 4 or np.isnan(np.asarray(box, dtype=np.float64)).any():
        return image
    sx, sy = scale
    h, w = image.shape[:2]
    x1, y1 = max(0, int(box[0] / sx)), max(0, int(box[1] / sy))
    x2, y2 = min(w, int(np.ceil(box[2] / sx))), min(h, int(np.ceil(box[3] / sy)))
    return image[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else image


def thumbnail_jpeg(content: bytes, box: Any = None, side: int = 160, quality: int = 85,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG of at most side x side pixels of `box` (or the whole image) in the image `content`.

    Raises:
        ThumbnailError: the bytes are not a decodable image (the reason is the message).
    """
    decoded = decode_image(content, DecodeConfig(max_pixels=max_pixels, max_side=side * 4))
    if decoded.error is not None:
        raise ThumbnailError(decoded.error)
    picture = Image.fromarray(np.ascontiguousarray(_crop_to_box(decoded.image, box, decoded.scale)))
    picture.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


def thumbnail_of(path: str, box: Any = None, side: int = 160, max_bytes: int = 256 << 20,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """`thumbnail_jpeg` of the file or URL at `path`, read with the usual byte cap.

    Raises:
        ThumbnailError: the image cannot be read or decoded (the reason is the message).
    """
    try:
        content = read_bytes(path, max_bytes)
    except ReadFailure as failure:
        raise ThumbnailError(failure.reason) from failure
    return thumbnail_jpeg(content, box, side, max_pixels=max_pixels)


def placeholder(side: int, text: str = "?") -> bytes:
    """A grey JPEG standing in for an image that cannot be read."""
    image = Image.new("RGB", (side, side), (200, 200, 200))
    ImageDraw.Draw(image).text((side // 2 - 4, side // 2 - 6), text, fill=(90, 90, 90))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    return out.getvalue()
