"""What the retrieval-descriptor options cost: embedder throughput and stored bytes per vector.

    python benchmarks/descriptors.py            # samples/ photos, default runtime and threads

Variants side by side in one run, on the same images (the sample photos, repeated to --images):
average pooling (the default "mobilenet-v2"), GeM pooling ("mobilenet-v2-gem"), GeM + flip,
GeM + scales {1, 1/sqrt2} + flip, and GeM + a 256-d PCA-whitening (fitted on these vectors: the
cost of applying it). Each variant is warmed up once, then timed over --repeats passes; prints a
table (images/s, ratio to the default, float32 bytes per vector) and writes
benchmarks/results/descriptors.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from imgfeat.models import create_embedder  # noqa: E402
from imgfeat.models.embedders import with_views  # noqa: E402
from imgfeat.whitening import fit_whitening  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--output", default=str(HERE / "results" / "descriptors.json"))
    args = parser.parse_args()
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(args.photos).glob("*.jpg"))]
    images = [photos[i % len(photos)] for i in range(args.images)]
    kwargs = {"threads": args.threads, "runtime": args.runtime}
    average = create_embedder("mobilenet-v2", **kwargs)
    gem = create_embedder("mobilenet-v2-gem", **kwargs)
    whitening = fit_whitening(np.concatenate([gem(images[i:i + 16]) for i in range(0, len(images), 16)]
                                             + [np.random.default_rng(0).normal(size=(300, gem.dim))]), 256)
    variants = {
        "avg (mobilenet-v2, default)": (average, None),
        "GeM p=3 (mobilenet-v2-gem)": (gem, None),
        "GeM + flip": (with_views(gem, flip=True), None),
        "GeM + scales 1,0.71 + flip": (with_views(gem, (1.0, 1 / math.sqrt(2)), True), None),
        "GeM + PCA-whitening 256": (gem, whitening),
    }
    rows = {}
    for name, (embedder, whiten) in variants.items():
        def run() -> None:
            for i in range(0, len(images), args.batch):
                vectors = embedder(images[i:i + args.batch])
                if whiten is not None:
                    whiten(vectors)

        run()  # warm-up: compiles, caches
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        best = min(seconds)
        dim = whiten.dim if whiten is not None else embedder.dim
        rows[name] = {"images_per_s": len(images) / best, "seconds": seconds, "dim": dim, "bytes_f32": 4 * dim}
    base = rows["avg (mobilenet-v2, default)"]["images_per_s"]
    print(f"runtime: {average.runtime}; {len(images)} images, batch {args.batch}, best of {args.repeats}")
    print("| variant | images/s | vs default | bytes per vector (f32) |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        row["ratio"] = row["images_per_s"] / base
        print(f"| {name} | {row['images_per_s']:.1f} | {row['ratio']:.2f} | {row['bytes_f32']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"runtime": average.runtime, "images": len(images),
                                             "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
