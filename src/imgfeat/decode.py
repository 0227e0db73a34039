"""Image bytes -> RGB uint8 array, whatever the format, mode or orientation.

`decode_image` never raises for bad input: it returns a `Decoded` with `error` set, so a
bad file becomes an error row. What it does, in order:
  1. read the header only (Pillow is lazy) and refuse images over the pixel cap;
  2. JPEG in RGB/gray: decode with libjpeg-turbo (simplejpeg) at the smallest DCT scale
     that keeps the long side >= `max_side`; everything else: Pillow, then an integer
     box reduction with the same rule;
  3. apply the EXIF orientation;
  4. convert any mode to RGB: alpha is composited on white, 16-bit and float samples are
     scaled to 8 bits (Pillow's own convert would clip them), palette, CMYK, 1-bit via Pillow.
`width`/`height` are the oriented full-resolution size; `image` may be smaller by `scale`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DecodeConfig

try:  # libjpeg-turbo with DCT-domain downscaling; Pillow is the correct fallback
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, but keep decode usable
    simplejpeg = None

_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


@dataclass
class Decoded:
    """A decoded image (or the reason it could not be decoded)."""

    image: np.ndarray | None  # H x W x 3 uint8, possibly reduced
    width: int = 0  # full-resolution size after EXIF orientation
    height: int = 0
    error: str | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """Factors from decoded pixels to full-resolution pixels (x, y)."""
        assert self.image is not None
        return self.width / self.image.shape[1], self.height / self.image.shape[0]


def _reduce_factor(width: int, height: int, max_side: int) -> int:
    """Largest integer factor that keeps the long side >= max_side."""
    if max_side <= 0:
        return 1
    return max(1, max(width, height) // max_side)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - malformed EXIF (or its warning raised as an error): keep pixels
        return 1


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an H x W x C array, as ImageOps.exif_transpose does."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return np.swapaxes(array, 0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.swapaxes(array, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        samples = np.asarray(img).astype(np.float64)
        if mode == "F":
            peak = float(np.nanmax(samples)) if samples.size else 0.0
            samples = samples * 255.0 if peak <= 1.0 else samples
        elif mode.startswith("I;16") or samples.max(initial=0) > 255:
            samples = samples / 257.0
        gray = np.clip(np.nan_to_num(samples), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info) \
            or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(content: bytes, config: DecodeConfig = DecodeConfig()) -> Decoded:
    """Decode one image. Never raises on bad data: see `Decoded.error`.

    Whatever Pillow or libjpeg-turbo raise while identifying or decoding one file (OSError,
    struct.error, MemoryError, NotImplementedError, a warning turned into an error...)
    becomes that image's error, so one odd file cannot take a run down.

    Args:
        content: the file's bytes.
        config: pixel cap and reduced-size decoding.

    Returns:
        Decoded with an H x W x 3 uint8 image, or with `error` set to a reason such as
        "empty: ...", "not-an-image: ...", "corrupt: ...", "unsupported: ...", "too-large: ...".
    """
    if not content:
        return Decoded(None, error="empty: the file has 0 bytes")
    try:
        return _decode(content, config)
    except Exception as exc:  # noqa: BLE001 - any failure on one file is that file's error row
        return Decoded(None, error=failure_reason(exc))


def failure_reason(exc: BaseException) -> str:
    """The error reason for an exception raised while decoding one image.

    too-large for Pillow's bomb checks, unsupported for a format feature or mode Pillow
    cannot handle (NotImplementedError, "conversion ... not supported"), not-an-image when
    no decoder recognises the bytes, corrupt for everything else.
    """
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too-large: {detail}"
    if isinstance(exc, UnidentifiedImageError):
        return "not-an-image: format not recognised"
    if isinstance(exc, NotImplementedError) or (isinstance(exc, ValueError) and "not supported" in detail):
        return f"unsupported: {type(exc).__name__}: {detail}"
    if isinstance(exc, MemoryError):
        return "corrupt: out of memory while decoding (MemoryError)"
    return f"corrupt: cannot decode ({type(exc).__name__}: {detail})"


def _decode(content: bytes, config: DecodeConfig) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
        img = Image.open(io.BytesIO(content))
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            return Decoded(None, error=f"corrupt: invalid size {width}x{height}")
        if width * height > config.max_pixels:
            return Decoded(None, error=f"too-large: {width}x{height} = {width * height} pixels > "
                                       f"cap {config.max_pixels} (possible decompression bomb)")
        orientation = _orientation(img)
        oriented = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        if img.format == "JPEG" and img.mode in ("RGB", "L") and simplejpeg is not None:
            array = _decode_jpeg_fast(content, width, height, config.max_side)
        else:
            array = _decode_pillow(img, config.max_side)
        array = orient_array(array, orientation)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
            return Decoded(None, error=f"unsupported: decoded to {array.dtype} {array.shape}, not RGB")
    finally:
        img.close()
    return Decoded(np.ascontiguousarray(array), width=oriented[0], height=oriented[1])


def _decode_jpeg_fast(content: bytes, width: int, height: int, max_side: int) -> np.ndarray:
    kwargs = {}
    if max_side > 0 and max(width, height) > max_side:
        if width >= height:
            kwargs["min_width"] = max_side
        else:
            kwargs["min_height"] = max_side
    return simplejpeg.decode_jpeg(content, colorspace="RGB", **kwargs)


def _decode_pillow(img: Image.Image, max_side: int) -> np.ndarray:
    if img.format == "JPEG" and max_side > 0:
        factor = _reduce_factor(*img.size, max_side)
        if factor > 1:  # DCT-domain downscale to the largest size still >= the request
            img.draft(img.mode, (img.size[0] // factor, img.size[1] // factor))
    img.seek(0) if getattr(img, "is_animated", False) else None
    img.load()
    factor = _reduce_factor(*img.size, max_side)
    if factor > 1:
        img = img.reduce(factor) if img.mode not in ("P", "1", "I;16", "I;16B", "I;16L") \
            else img.resize((img.size[0] // factor, img.size[1] // factor), Image.NEAREST)
    return _to_rgb(img)


__all__ = ["Decoded", "decode_image", "failure_reason", "orient_array"]
