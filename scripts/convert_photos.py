"""Check and convert the originals a fetch script lists: scripts/fetch_samples.sh and
scripts/fetch_eval_photos.sh share this step.

    python scripts/convert_photos.py OUT_DIR MANIFEST

MANIFEST lines are `output name|original path|expected sha256`. A sum that differs is reported
(the archive may have moved on to a newer version) but the conversion still runs. Each original
is resized so the long side is <= 800 px (never enlarged; Lanczos), its EXIF orientation applied,
metadata and transparency dropped (grayscale stays grayscale), and saved as JPEG quality 90, or
PNG for a .png output name. scipy's face.dat is the raccoon photo as bz2-compressed raw
768x1024 RGB bytes (no pickle).
"""

from __future__ import annotations

import bz2
import hashlib
import sys

import numpy as np
from PIL import Image, ImageOps

LONG_SIDE = 800


def open_original(src: str) -> Image.Image:
    if src.endswith("face.dat"):
        with open(src, "rb") as f:
            return Image.fromarray(np.frombuffer(bz2.decompress(f.read()), np.uint8).reshape(768, 1024, 3))
    im = Image.open(src)
    im.load()
    return im


def main(out: str, manifest: str) -> None:
    for line in open(manifest):
        name, src, expected = line.rstrip("\n").split("|")
        with open(src, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != expected:
            print(f"warning: {src}: sha256 {got}, expected {expected}", file=sys.stderr)
        im = ImageOps.exif_transpose(open_original(src))
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        w, h = im.size
        scale = LONG_SIDE / max(w, h)
        if scale < 1:
            im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        if name.endswith(".png"):
            im.save(f"{out}/{name}", "PNG", optimize=True)
        else:
            im.save(f"{out}/{name}", "JPEG", quality=90, optimize=True)
        print(f"{name}: {w}x{h} -> {im.size[0]}x{im.size[1]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
