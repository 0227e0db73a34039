"""Image transformations: the near-duplicate benchmark's edits and the training views of a hash.

Pure functions over RGB PIL images; each takes its parameters explicitly. `TRANSFORMS` names
a randomised version of each (parameters drawn from a `numpy.random.Generator` in the ranges
the benchmark uses), and `random_view` chains a few of them into one training view.

    resize      scale the long side by 0.3-0.6
    jpeg        re-encode at quality 20-30
    crop        keep 70-90% of each side, at a random position
    flip        mirror left-right
    rotate      rotate by +-(10..20) degrees, corners filled from the edge colour
    brightness  multiply brightness by 0.6-0.8 or 1.25-1.5
    text        draw a caption (PIL's default font) over the image
    grayscale   drop colour (kept as 3 RGB channels)
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def resize(image: Image.Image, scale: float) -> Image.Image:
    """The image scaled by `scale` on both sides (at least 8 pixels each)."""
    width, height = image.size
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG encode/decode round trip at `quality` (1-95)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def crop_fraction(image: Image.Image, fraction: float, x: float = 0.5, y: float = 0.5) -> Image.Image:
    """A window of `fraction` x each side; `x`, `y` in [0, 1] place it (0.5 = centred)."""
    width, height = image.size
    crop_w, crop_h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left = round((width - crop_w) * min(max(x, 0.0), 1.0))
    top = round((height - crop_h) * min(max(y, 0.0), 1.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def flip(image: Image.Image) -> Image.Image:
    """The image mirrored left-right."""
    return ImageOps.mirror(image)


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """The image rotated counter-clockwise by `degrees`, same size; corners take the mean colour
    of the border, so no black wedges tell the transform away."""
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    fill = tuple(int(v) for v in border.mean(axis=0))
    return image.convert("RGB").rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """The image with brightness multiplied by `factor` (1.0 unchanged)."""
    return ImageEnhance.Brightness(image).enhance(factor)


def text_overlay(image: Image.Image, text: str, y: float = 0.8) -> Image.Image:
    """The image with `text` drawn in white on a dark band at height `y` (fraction of the image)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    size = max(10, out.size[1] // 12)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        font = ImageFont.load_default()
    left, top = round(out.size[0] * 0.05), round(out.size[1] * y)
    box = draw.textbbox((left, top), text, font=font)
    draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=(20, 20, 20))
    draw.text((left, top), text, fill=(255, 255, 255), font=font)
    return out


def grayscale(image: Image.Image) -> Image.Image:
    """The image without colour, as RGB."""
    return image.convert("L").convert("RGB")


_CAPTIONS = ("SALE -50%", "www.example.com", "Copyright 2024", "NEW ARRIVAL", "@shop_photos")

TRANSFORMS: dict[str, Transform] = {
    "resize": lambda im, rng: resize(im, rng.uniform(0.3, 0.6)),
    "jpeg": lambda im, rng: jpeg(im, int(rng.integers(20, 31))),
    "crop": lambda im, rng: crop_fraction(im, rng.uniform(0.7, 0.9), rng.uniform(), rng.uniform()),
    "flip": lambda im, rng: flip(im),
    "rotate": lambda im, rng: rotate(im, rng.choice([-1, 1]) * rng.uniform(10, 20)),
    "brightness": lambda im, rng: brightness(
        im, rng.uniform(0.6, 0.8) if rng.uniform() < 0.5 else rng.uniform(1.25, 1.5)),
    "text": lambda im, rng: text_overlay(im, str(rng.choice(_CAPTIONS)), rng.uniform(0.05, 0.8)),
    "grayscale": lambda im, rng: grayscale(im),
}


def apply(name: str, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Apply the randomised transform `name` (a key of TRANSFORMS).

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
    """
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](image.convert("RGB"), rng)


def random_view(image: Image.Image, rng: np.random.Generator, max_transforms: int = 3) -> Image.Image:
    """A training view: 1 to `max_transforms` distinct random transforms in random order.

    Args:
        image: an RGB image (the original or its main-object crop).
        rng: the source of randomness (seed it for reproducible views).
        max_transforms: the most transforms chained.

    Returns:
        The transformed RGB image.
    """
    count = int(rng.integers(1, max_transforms + 1))
    names = rng.choice(list(TRANSFORMS), size=count, replace=False)
    view = image.convert("RGB")
    for name in names:
        view = apply(str(name), view, rng)
    return view


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as an H x W x 3 uint8 array (what the pipeline's models take)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
