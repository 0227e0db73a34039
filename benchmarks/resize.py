"""The embedder's antialiased resize: OpenCV INTER_AREA (imgfeat before) against imgfeat's
box halving + bilinear (`models.preprocess.resize`, "area"), in one run.

    python benchmarks/resize.py                 # ~2-4 min on 2 cores
    python benchmarks/resize.py --images 100 --rounds 2

Rows:
    resize  one image to 224 x 224, one OpenCV thread, best of 5 repeats, for photos with a
            long side of 640, 1024 and 2048 (what `decode` hands over: JPEGs come reduced to
            a long side >= 1024): "inter-area" (cv2.INTER_AREA), "halves" (imgfeat now),
            "linear" (plain bilinear, aliased)
    extract `imgfeat.extract` with default settings (main object + whole image) on photos
            made as benchmarks/throughput.py makes them, each variant in a fresh process,
            interleaved round after round; the "inter-area" variant runs imgfeat with its
            resize swapped for cv2.INTER_AREA (the code before this change)

Quality is not measured here: `imgfeat eval neardup` before and after (docs/benchmarks.md).
Results: a table on stdout and benchmarks/results/resize.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
RESULTS = HERE / "results" / "resize.json"


def _inter_area(image: np.ndarray, size: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    import cv2

    flag = cv2.INTER_AREA if interpolation == "area" and size[0] <= image.shape[0] and size[1] <= image.shape[1] \
        else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=flag)


def resize_rows(repeats: int = 5) -> list[dict]:
    import cv2
    from PIL import Image

    from imgfeat.models.preprocess import resize

    cv2.setNumThreads(1)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((HERE.parent / "samples").iterdir())]
    methods = {"inter-area": _inter_area, "halves": resize,
               "linear": lambda image, size: resize(image, size, "linear")}
    rows = []
    for side in (640, 1024, 2048):
        images = [cv2.resize(p, (side, side * p.shape[0] // p.shape[1]), interpolation=cv2.INTER_CUBIC) for p in photos]
        best = {}
        for name, method in methods.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                for image in images:
                    method(image, (224, 224))
                times.append((time.perf_counter() - start) / len(images) * 1000)
            best[name] = min(times)
        for name in methods:
            rows.append({"row": "resize", "long_side": side, "variant": name, "ms_per_image": round(best[name], 3),
                         "speedup_vs_inter_area": round(best["inter-area"] / best[name], 2)})
    return rows


def one_extract(folder: str, out: str, variant: str) -> dict:
    import imgfeat
    from imgfeat.models import preprocess

    if variant == "inter-area":
        preprocess.resize = _inter_area  # to_tensor looks the name up at call time
    start = time.perf_counter()
    report = imgfeat.extract(folder, out, progress=False, overwrite=True)
    return {"images": report.processed, "seconds": time.perf_counter() - start,
            "embed_seconds": report.stage_seconds.get("embed", 0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150, help="photos per extract run (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="extract runs per variant (default 3)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run:
        print(json.dumps(one_extract(*args._run)))
        return 0

    rows = resize_rows()
    sys.path.insert(0, str(HERE))
    from throughput import make_photos

    runs: dict[str, list[dict]] = {"inter-area": [], "halves": []}
    with tempfile.TemporaryDirectory(prefix="imgfeat-resize-") as tmp:
        make_photos(Path(tmp) / "photos", args.images)
        for _ in range(args.rounds):
            for variant in runs:
                done = subprocess.run([sys.executable, __file__, "--_run", str(Path(tmp) / "photos"),
                                       str(Path(tmp) / "out"), variant], capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["images"] / r["seconds"] for r in runs["inter-area"])
    for variant, measured in runs.items():
        rate = statistics.median(r["images"] / r["seconds"] for r in measured)
        rows.append({"row": "extract", "variant": variant, "images_per_s": round(rate, 2),
                     "vs_inter_area": round(rate / base, 2),
                     "embed_stage_s": round(statistics.median(r["embed_seconds"] for r in measured), 2),
                     "runs": measured})

    print("| row | photo long side | variant | ms / image or img/s | vs inter-area | embed stage s |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        if row["row"] == "resize":
            print(f"| resize | {row['long_side']} | {row['variant']} | {row['ms_per_image']:.2f} ms | "
                  f"{row['speedup_vs_inter_area']:.2f}x | |")
        else:
            print(f"| extract | | {row['variant']} | {row['images_per_s']:.2f} img/s | {row['vs_inter_area']:.2f} | "
                  f"{row['embed_stage_s']:.2f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
