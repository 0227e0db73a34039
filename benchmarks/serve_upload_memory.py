"""Peak memory of decoding uploaded PNGs: the figures behind the serve pixel cap
(`imgfeat serve --max-pixels`, default `imgfeat.serve.service.UPLOAD_MAX_PIXELS`) and the
bound on decodes at once (`--max-decodes`, default the number of cores).

Table 1: one PNG of each size, decoded in a fresh subprocess with the default DecodeConfig
(max_side 1024, the cap lifted so every size decodes). Table 2: six 40-Mpx uploads arriving
at once, decoded in six threads behind a semaphore of 1, 2 or 6 (6: no bound), as
`SearchService.decode` does. Memory is the growth of the process's RSS, sampled every 0.5 ms
from /proc/self/statm (ru_maxrss would still hold the imports' peak).

    python benchmarks/serve_upload_memory.py     # tables + benchmarks/results/serve_upload_memory.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIDES = [2000, 4000, 6325, 9000]
CONCURRENT = 6
BOUNDS = [1, 2, 6]

CHILD = r"""
import os, sys, threading, time
from imgfeat.config import DecodeConfig
from imgfeat.decode import decode_image
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE
png = open(sys.argv[1], "rb").read()
copies, bound = int(sys.argv[2]), threading.BoundedSemaphore(int(sys.argv[3]))
base, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
def decode():
    with bound:
        decoded = decode_image(png, DecodeConfig(max_pixels=10**9))
        assert decoded.error is None, decoded.error
sampler = threading.Thread(target=sample); sampler.start()
started = time.perf_counter()
workers = [threading.Thread(target=decode) for _ in range(copies)]
for w in workers: w.start()
for w in workers: w.join()
elapsed = time.perf_counter() - started
done.set(); sampler.join()
print(len(png), peak[0] - base, elapsed)
"""


def _png(side: int, path: Path) -> None:
    """A black square with one red pixel: tiny on disk, `side`^2 pixels decoded (a bomb-like upload)."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.zeros((side, side, 3), np.uint8))
    image.putpixel((side // 2, side // 2), (255, 0, 0))
    image.save(path, format="PNG")


def _measure(path: Path, copies: int, bound: int) -> tuple[int, int, float]:
    # a fresh process per measurement: the peak counts only these decodes
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(copies), str(bound)],
                          capture_output=True, text=True, check=True)
    png_bytes, peak, elapsed = done.stdout.split()
    return int(png_bytes), int(peak), float(elapsed)


def main() -> None:
    sizes, bounded = [], []
    with tempfile.TemporaryDirectory() as folder:
        for side in SIDES:
            _png(side, Path(folder) / f"{side}.png")
        for side in SIDES:
            png_bytes, peak, _ = _measure(Path(folder) / f"{side}.png", 1, 1)
            sizes.append({"side": side, "megapixels": round(side * side / 1e6, 1), "png_kb": round(png_bytes / 1024),
                          "peak_rss_growth_mb": round(peak / 2**20), "ratio_to_rgb": round(peak / (side * side * 3), 2)})
        for bound in BOUNDS:
            _, peak, elapsed = _measure(Path(folder) / "6325.png", CONCURRENT, bound)
            bounded.append({"uploads": CONCURRENT, "megapixels": 40.0, "max_decodes": bound,
                            "peak_rss_growth_mb": round(peak / 2**20), "seconds": round(elapsed, 2)})
    print(f"{'px':>11} {'Mpx':>6} {'PNG KB':>7} {'+peak RSS MB':>13} {'/ RGB size':>10}")
    for r in sizes:
        print(f"{r['side']:>5}x{r['side']:<5} {r['megapixels']:>6} {r['png_kb']:>7} {r['peak_rss_growth_mb']:>13} "
              f"{r['ratio_to_rgb']:>10}")
    unbounded = bounded[-1]
    print(f"\n{CONCURRENT} uploads of 40 Mpx at once")
    print(f"{'max_decodes':>11} {'+peak RSS MB':>13} {'vs unbounded':>12} {'seconds':>8}")
    for r in bounded:
        print(f"{r['max_decodes']:>11} {r['peak_rss_growth_mb']:>13} "
              f"{r['peak_rss_growth_mb'] / max(unbounded['peak_rss_growth_mb'], 1):>12.2f} {r['seconds']:>8}")
    out = Path(__file__).parent / "results" / "serve_upload_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"sizes": sizes, "concurrent": bounded}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
