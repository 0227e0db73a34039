"""What `extract --objects K` costs: pipeline throughput and stored bytes per row, K side by side.

    python benchmarks/objects.py                       # samples/ photos, default runtime
    python benchmarks/objects.py --photos eval_photos/ --objects 0,3,5

The Features stage (detect -> crop -> embed crop + whole image [+ K-1 more objects] -> hash),
exactly as `imgfeat extract` runs it, over the same decoded photos (repeated to --images), once
per K, interleaved over --rounds so that a busy machine slows every variant alike. Bytes: the
Parquet file of those rows written with the sink's settings, divided by the rows (the objects
column's share is that minus K=0's). Prints a table and writes benchmarks/results/objects.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from imgfeat.config import PipelineConfig  # noqa: E402
from imgfeat.stages import Features, ImageBatch  # noqa: E402


def parquet_bytes(table) -> int:
    out = io.BytesIO()
    pq.write_table(table.drop_columns(["detector", "embedder", "hasher"]), out, compression="zstd")
    return out.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--objects", default="0,2,3,5", help="values of K, comma-separated (0: off)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--output", default=str(HERE / "results" / "objects.json"))
    args = parser.parse_args()
    counts = [int(v) for v in args.objects.split(",")]
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((1024, 1024))  # decode's default --max-side keeps about this much
            photos.append(np.asarray(image))
    images = [photos[i % len(photos)] for i in range(args.images)]
    stages = {k: Features(PipelineConfig.from_options(objects=k, runtime=args.runtime, workers=0, progress=False))
              for k in counts}

    def run(features: Features) -> list:
        return [features(ImageBatch.of_images(images[i:i + args.batch]))
                for i in range(0, len(images), args.batch)]

    seconds: dict[int, list[float]] = {k: [] for k in counts}
    tables = {k: run(stages[k]) for k in counts}  # warm-up, and the rows whose bytes are counted
    for _ in range(args.rounds):
        for k in counts:
            start = time.perf_counter()
            run(stages[k])
            seconds[k].append(time.perf_counter() - start)
    import pyarrow as pa

    rows = {}
    for k in counts:
        table = pa.concat_tables(tables[k])
        found = (np.asarray([len(o) for o in table.column("objects").to_pylist() if o is not None])
                 if "objects" in table.column_names else np.ones(table.num_rows))
        rows[k] = {"images_per_s": len(images) / min(seconds[k]), "seconds": seconds[k],
                   "objects_per_image": float(found.mean()), "bytes_per_row": parquet_bytes(table) / table.num_rows}
    base = rows[counts[0]]
    runtime = stages[counts[0]].digests.get("runtime")
    print(f"runtime: {runtime}; {len(images)} images from {args.photos}, batch {args.batch}, best of {args.rounds}")
    print("| --objects K | images/s | vs K=%d | objects stored per image | Parquet bytes per row | vs K=%d |"
          % (counts[0], counts[0]))
    print("|---:|---:|---:|---:|---:|---:|")
    for k, row in rows.items():
        row["ratio"] = row["images_per_s"] / base["images_per_s"]
        row["bytes_ratio"] = row["bytes_per_row"] / base["bytes_per_row"]
        print(f"| {k} | {row['images_per_s']:.1f} | {row['ratio']:.2f} | "
              f"{row['objects_per_image']:.2f} | {row['bytes_per_row']:.0f} | {row['bytes_ratio']:.2f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"runtime": runtime, "images": len(images), "photos": args.photos,
                                             "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
