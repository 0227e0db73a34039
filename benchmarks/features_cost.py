"""What extraction options cost: pipeline throughput and stored bytes per row, side by side.

    python benchmarks/features_cost.py                 # samples/ photos, default runtime
    python benchmarks/features_cost.py --variants "image_aspect=0;default;image_gray=1;objects=3;objects=5"

Each variant is the default configuration with some options changed ("default": none;
"objects=3,image_gray=1": two; values are Python literals, 0/1 for booleans). The Features stage
(detect -> crop -> embed crop + whole image [+ more objects] -> hash), exactly as `imgfeat
extract` runs it, over the same decoded photos (repeated to --images), once per variant,
interleaved over --rounds so that a busy machine slows every variant alike; ratios are to the
first variant; the detect and embed stage seconds are those of each variant's best round. Prints a table
and writes benchmarks/results/features_cost.json.
"""

from __future__ import annotations

import argparse
import ast
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


def options_of(variant: str) -> dict:
    """'objects=3,image_gray=1' -> {"objects": 3, "image_gray": 1}; 'default' -> {}."""
    if variant.strip() == "default":
        return {}
    pairs = (part.split("=", 1) for part in variant.split(",") if part.strip())
    return {key.strip(): ast.literal_eval(value.strip()) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--variants", default="image_aspect=0;default;image_gray=1;objects=3",
                        help="';'-separated variants, each 'default' or comma-separated option=value")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--output", default=str(HERE / "results" / "features_cost.json"))
    args = parser.parse_args()
    variants = {name.strip(): options_of(name) for name in args.variants.split(";") if name.strip()}
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((1024, 1024))  # decode's default --max-side keeps about this much
            photos.append(np.asarray(image))
    images = [photos[i % len(photos)] for i in range(args.images)]
    stages = {name: Features(PipelineConfig.from_options(runtime=args.runtime, workers=0, progress=False, **options))
              for name, options in variants.items()}

    def run(features: Features) -> list:
        return [features(ImageBatch.of_images(images[i:i + args.batch]))
                for i in range(0, len(images), args.batch)]

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    stage_seconds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    tables = {name: run(stages[name]) for name in variants}  # warm-up, and the rows whose bytes are counted
    for _ in range(args.rounds):
        for name in variants:
            before = dict(stages[name].timer.seconds)
            start = time.perf_counter()
            run(stages[name])
            seconds[name].append(time.perf_counter() - start)
            stage_seconds[name].append({stage: total - before.get(stage, 0.0)
                                        for stage, total in stages[name].timer.seconds.items()})
    import pyarrow as pa

    rows = {}
    for name in variants:
        table = pa.concat_tables(tables[name])
        found = (np.asarray([len(o) for o in table.column("objects").to_pylist() if o is not None])
                 if "objects" in table.column_names else np.ones(table.num_rows))
        best = int(np.argmin(seconds[name]))
        rows[name] = {"options": variants[name], "images_per_s": len(images) / seconds[name][best],
                      "seconds": seconds[name], "stage_seconds": stage_seconds[name][best], "objects_per_image": float(found.mean()),
                      # the distinct photos only: repeats would compress to nothing
                      "bytes_per_row": parquet_bytes(table.slice(0, len(photos))) / min(len(photos), table.num_rows),
                      "preprocess": stages[name].digests.get("preprocess"),
                      # OpenVINO compiles one model per input shape (weights and buffers each)
                      "embedder_compiled_shapes": len(getattr(stages[name].embedder.model, "compiled_shapes", ()))
                      if hasattr(stages[name].embedder, "model") else None}
    first = next(iter(rows.values()))
    runtime = next(iter(stages.values())).digests.get("runtime")
    print(f"runtime: {runtime}; {len(images)} images from {args.photos}, batch {args.batch}, best of {args.rounds}")
    print("| variant | images/s | vs first | detect s | embed s | objects stored per image | "
          "Parquet bytes per row | vs first |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        row["ratio"] = row["images_per_s"] / first["images_per_s"]
        row["bytes_ratio"] = row["bytes_per_row"] / first["bytes_per_row"]
        stage = row["stage_seconds"]
        print(f"| {name} | {row['images_per_s']:.1f} | {row['ratio']:.2f} | {stage.get('detect', 0):.2f} | "
              f"{stage.get('embed', 0):.2f} | {row['objects_per_image']:.2f} | {row['bytes_per_row']:.0f} | "
              f"{row['bytes_ratio']:.2f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"runtime": runtime, "images": len(images), "photos": args.photos,
                                             "batch": args.batch, "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
