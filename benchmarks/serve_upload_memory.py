"""Peak memory of decoding one uploaded PNG, by pixel count: the figure behind the serve
pixel cap (`imgfeat serve --max-pixels`, default `DEFAULT_UPLOAD_MAX_PIXELS`).

Each size is decoded in a fresh subprocess with the default DecodeConfig (max_side 1024, the
cap lifted so every size decodes); the table gives the PNG's size on disk, the growth of the
process's peak RSS (sampled from /proc/self/statm) over the decode, and the ratio to the decoded RGB size.

    python benchmarks/serve_upload_memory.py            # table + benchmarks/results/serve_upload_memory.json
"""

from __future__ import annotations

import json
import tempfile
import subprocess
import sys
from pathlib import Path

SIDES = [2000, 4000, 6325, 9000]

CHILD = r"""
import os, sys, threading, time
from imgfeat.config import DecodeConfig
from imgfeat.decode import decode_image
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE
png = open(sys.argv[1], "rb").read()
base, peak, done = rss(), [0], threading.Event()
def sample():  # ru_maxrss would hold the import's peak: sample the current RSS instead
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
sampler = threading.Thread(target=sample); sampler.start()
decoded = decode_image(png, DecodeConfig(max_pixels=10**9))
done.set(); sampler.join()
assert decoded.error is None, decoded.error
print(len(png), peak[0] - base)
"""


def _png(side: int, path: Path) -> None:
    """A black square with one red pixel: tiny on disk, `side`^2 pixels decoded (a bomb-like upload)."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.zeros((side, side, 3), np.uint8))
    image.putpixel((side // 2, side // 2), (255, 0, 0))
    image.save(path, format="PNG")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for side in SIDES:
            _png(side, Path(folder) / f"{side}.png")
        for side in SIDES:
            # a fresh process per size: the peak RSS counts only this decode
            done = subprocess.run([sys.executable, "-c", CHILD, str(Path(folder) / f"{side}.png")],
                                  capture_output=True, text=True, check=True)
            png_bytes, peak = (int(v) for v in done.stdout.split())
            rows.append({"side": side, "megapixels": round(side * side / 1e6, 1), "png_kb": round(png_bytes / 1024),
                         "peak_rss_growth_mb": round(peak / 2**20), "ratio_to_rgb": round(peak / (side * side * 3), 2)})
    print(f"{'px':>11} {'Mpx':>6} {'PNG KB':>7} {'+peak RSS MB':>13} {'/ RGB size':>10}")
    for r in rows:
        print(f"{r['side']:>5}x{r['side']:<5} {r['megapixels']:>6} {r['png_kb']:>7} {r['peak_rss_growth_mb']:>13} "
              f"{r['ratio_to_rgb']:>10}")
    out = Path(__file__).parent / "results" / "serve_upload_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
