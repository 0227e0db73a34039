#!/usr/bin/env python3
"""Write the awkward test files (tests/data/awkward/) into a folder.

Usage: python tests/data/make_awkward.py OUT_DIR

Needs only Pillow and numpy.  Deterministic: the same Pillow/libjpeg/libwebp
versions give the same bytes.  The real-photo files are crops of
samples/dog.jpg (see docs/samples.md for its licence).

Each file's name says what it is; OUT_DIR/README.md (committed copy in
tests/data/awkward/README.md) says what a decoder should do with it.
A dangling symlink is deliberately not written: tests make one at run time.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "dog.jpg"

W, H = 64, 48  # size of the small synthetic images

BOMB_SIDE = 25000  # bomb.png declares 25000 x 25000 = 625 Mpx (1-bit)
BOMB_HEADER_SIDE = 30000  # bomb_header.jpg declares 30000 x 30000 = 900 Mpx


def gradient(w: int = W, h: int = H) -> np.ndarray:
    """RGB uint8 (h, w, 3): red rises left to right, green top to bottom."""
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    b = np.full((h, w), 128.0)
    return np.stack([x, y, b], axis=-1).round().astype(np.uint8)


def photo_crop(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A crop of a real photograph (the dog and bicycle in samples/dog.jpg)."""
    with Image.open(PHOTO) as im:
        im = im.convert("RGB")
        # dog's head and the bicycle's front wheel: 320x240 box, halved
        box = (60, 180, 380, 420)
        return im.crop(box).resize(size, Image.Resampling.LANCZOS)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid PNG of side x side 1-bit black pixels, written chunk by chunk.

    Never holds the raw image in memory: the zero rows are streamed through
    zlib.compressobj.  ~1000:1 compression, so 625 Mpx is about 76 KB.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit gray
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    parts = []
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    idat = b"".join(parts)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(png_chunk(b"IHDR", ihdr))
        f.write(png_chunk(b"IDAT", idat))
        f.write(png_chunk(b"IEND", b""))


def write_bomb_header_jpg(path: Path, side: int = BOMB_HEADER_SIDE) -> None:
    """A small JPEG whose SOF header is patched to claim side x side pixels.

    The scan data is that of a 64x48 image, so a decoder that skips the
    size check finds far too little data (truncated / broken data).
    """
    data = bytearray(jpeg_bytes(Image.fromarray(gradient()), quality=90))
    i = 2
    while i < len(data):
        assert data[i] == 0xFF, "bad JPEG marker walk"
        marker = data[i + 1]
        seglen = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: P, Y, X follow the length
            data[i + 5 : i + 9] = struct.pack(">HH", side, side)
            break
        i += 2 + seglen
    else:  # pragma: no cover
        raise RuntimeError("no SOF marker found")
    path.write_bytes(bytes(data))


def write_exif_rotated(path: Path) -> None:
    """Stored 120x80 (landscape), EXIF Orientation=6: displays as 80x120.

    Stored quadrants (60x40 each): top-left red, top-right green,
    bottom-left blue, bottom-right white.  Orientation 6 means "rotate 90
    degrees clockwise to display", so once applied the red quadrant is at
    the displayed top-right, green bottom-right, blue top-left, white
    bottom-left.
    """
    im = Image.new("RGB", (120, 80), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 59, 39), fill=(255, 0, 0))
    d.rectangle((60, 0, 119, 39), fill=(0, 255, 0))
    d.rectangle((0, 40, 59, 79), fill=(0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())


def write_animated_gif(path: Path) -> None:
    """3 frames: red, green, blue (first frame red)."""
    frames = [Image.new("RGB", (W, H), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(
        path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(gradient())
    photo = photo_crop()

    # --- not images / broken images ------------------------------------
    (out / "empty.jpg").write_bytes(b"")
    full = jpeg_bytes(photo, quality=90)
    (out / "truncated.jpg").write_bytes(full[: len(full) // 2])
    rng = np.random.RandomState(1234)
    (out / "random_bytes.jpg").write_bytes(rng.randint(0, 256, 4096, dtype=np.uint8).tobytes())
    (out / "text_named.jpg").write_text(
        "This is a plain text file that only pretends to be a JPEG.\n"
    )
    (out / "notes.txt").write_text("Notes: this folder holds awkward files for tests.\n")

    # --- unusual modes -------------------------------------------------
    rgb.convert("CMYK").save(out / "cmyk.jpg", "JPEG", quality=90)
    g16 = (
        np.linspace(0, 65535, W, dtype=np.float64)[None, :].repeat(H, 0).round().astype(np.uint16)
    )
    Image.fromarray(g16).save(out / "gray16.png")  # mode I;16
    rgb.convert("L").save(out / "gray.png")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0  # palette index 0 is fully transparent
    pal.save(out / "palette_alpha.png", transparency=0)
    rgba = rgb.copy()
    alpha = np.full((H, W), 255, dtype=np.uint8)
    alpha[:, : W // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(out / "rgba.png")
    la = rgb.convert("L")
    la.putalpha(Image.fromarray(alpha))
    la.save(out / "la.png")
    rgb.convert("L").convert("1").save(out / "bilevel.tiff")  # mode 1, dithered
    fl = np.linspace(0.0, 255.0, W, dtype=np.float32)[None, :].repeat(H, 0)
    Image.fromarray(fl).save(out / "float.tiff")  # mode F, 0..255

    # --- animation, orientation -----------------------------------------
    write_animated_gif(out / "animated.gif")
    write_exif_rotated(out / "exif_rotated.jpg")

    # --- other containers, real photo ------------------------------------
    photo.save(out / "webp.webp", "WEBP", quality=80, method=6)
    photo.save(out / "bmp.bmp", "BMP")
    photo.save(out / "tiff.tiff", "TIFF", compression="tiff_deflate")
    nested = out / "nested" / "deeper"
    nested.mkdir(parents=True, exist_ok=True)
    photo.save(nested / "photo.jpg", "JPEG", quality=90)

    # --- decompression bombs ---------------------------------------------
    write_bomb_png(out / "bomb.png")
    write_bomb_header_jpg(out / "bomb_header.jpg")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_awkward.py OUT_DIR")
    main(Path(sys.argv[1]))
