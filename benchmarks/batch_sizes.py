"""Which runtime, batch size and stream count run the default networks fastest here.

    python benchmarks/batch_sizes.py             # ~3 min on 2 cores
    python benchmarks/batch_sizes.py --images 32

The evidence behind imgfeat's defaults (`--runtime auto`, `DEFAULT_BATCH_SIZES`,
`default_streams`): the CenterNet detector (512x512) and the MobileNetV2 embedder (224x224)
on letterboxed / resized real photos held in memory, for every installed runtime, at
several batch sizes, then at the best batch size in 1 stream (every core) and in
N streams of cores/N threads run from N Python threads at once. Networks only: no decode,
no pre- or post-processing. One table on stdout, JSON in benchmarks/results/batch_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "batch_sizes.json"
BATCHES = {"detector": (1, 2, 4, 8), "embedder": (1, 4, 8, 16, 32)}


def photos(count: int) -> list[np.ndarray]:
    """`count` RGB arrays from samples/, repeated as needed."""
    paths = sorted(p for p in (ROOT / "samples").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return [images[i % len(images)] for i in range(count)]


def inputs(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The two networks' input tensors, made the way imgfeat makes them."""
    from imgfeat.models.preprocess import InputSpec, letterbox, to_tensor

    squares = np.stack([letterbox(image, 512)[0] for image in images]).astype(np.float32)
    return {"detector": squares, "embedder": to_tensor(images, InputSpec(size=(224, 224)))}


def models(runtime: str, threads: int) -> dict:
    from imgfeat.models import create_detector, create_embedder

    return {"detector": create_detector("centernet-mbv3", runtime=runtime, threads=threads).model,
            "embedder": create_embedder("mobilenet-v2", runtime=runtime, threads=threads).model}


def rate(model, tensor: np.ndarray, batch: int, streams: int = 1) -> float:
    """Images per second over the whole tensor in `batch`-sized calls from `streams` threads."""
    starts = list(range(0, len(tensor), batch))
    model.run(tensor[:batch])  # warm-up: first-call allocations are not the steady state
    begin = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda s: model.run(tensor[s:s + batch]), starts))
    return len(tensor) / (time.perf_counter() - begin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images per measurement (default 48)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    from imgfeat.models.runtimes import openvino_available

    cores = os.cpu_count() or 1
    tensors = inputs(photos(args.images))
    runtimes = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
    rows = []
    for runtime in runtimes:
        nets = models(runtime, threads=0)
        for name, model in nets.items():
            for batch in BATCHES[name]:
                rows.append({"runtime": runtime, "model": name, "batch": batch, "streams": 1, "threads": "all",
                             "images_per_second": round(rate(model, tensors[name], batch), 2)})
                print(rows[-1], file=sys.stderr, flush=True)
        for streams in sorted({2, 3, cores} - {1}):
            threads = max(1, cores // streams)
            nets = models(runtime, threads=threads)
            for name, model in nets.items():
                best = max((r for r in rows if r["runtime"] == runtime and r["model"] == name and r["streams"] == 1),
                           key=lambda r: r["images_per_second"])["batch"]
                rows.append({"runtime": runtime, "model": name, "batch": best, "streams": streams, "threads": threads,
                             "images_per_second": round(rate(model, tensors[name], best, streams), 2)})
                print(rows[-1], file=sys.stderr, flush=True)

    lines = ["| runtime | model | batch | streams x threads | images/s | vs best |", "|---|---|---:|---|---:|---:|"]
    for row in rows:
        top = max(r["images_per_second"] for r in rows if r["model"] == row["model"])
        lines.append(f"| {row['runtime']} | {row['model']} | {row['batch']} | {row['streams']} x {row['threads']} "
                     f"| {row['images_per_second']:.2f} | {row['images_per_second'] / top:.2f} |")
    print("\n".join(lines))
    result = {"machine": {"cpus": cores, "cpu": platform.processor() or platform.machine(),
                          "load_average": os.getloadavg()},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "images": args.images, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
