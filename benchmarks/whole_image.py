"""What storing the whole image's vector beside the main object's costs: Features with
embed.whole_image on and off over the same decoded photos, interleaved round by round.

    python benchmarks/whole_image.py                 # default runtime, 3 rounds
    python benchmarks/whole_image.py --runtime onnxruntime

CPU seconds of this process are compared (on a shared machine they move less than wall time);
one inference thread, so CPU time is the work done. Prints a table and writes
benchmarks/results/whole_image.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from imgfeat.decode import decode_image  # noqa: E402
from imgfeat.config import PipelineConfig  # noqa: E402
from imgfeat.stages import Features, ImageBatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(HERE / "results" / "whole_image.json"))
    args = parser.parse_args()
    images = []  # decoded as extraction decodes them (reduced to the decode config's max_side)
    decode = PipelineConfig().decode
    for path in sorted((HERE.parent / "samples").iterdir()):
        if path.suffix.lower() in (".jpg", ".png"):
            image = decode_image(path.read_bytes(), decode).image
            images += [image, np.ascontiguousarray(image[:, ::-1])]
    variants = {name: Features(PipelineConfig.from_options(runtime=args.runtime, threads=1, streams=1, workers=0,
                                                           progress=False, whole_image=on))
                for name, on in (("object only", False), ("object + whole image", True))}
    batches = [ImageBatch.of_images(images[i:i + 16]) for i in range(0, len(images), 16)]
    for features in variants.values():  # warm up: compile shapes, fill caches
        features(batches[0])
    cpu = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, features in variants.items():
            start = time.process_time()
            for batch in batches:
                features(batch)
            cpu[name].append(time.process_time() - start)
    base = statistics.median(cpu["object only"])
    rows = {name: {"cpu_s_median": statistics.median(v), "cpu_ms_per_image": 1000 * statistics.median(v) / len(images),
                   "vs_object_only": statistics.median(v) / base} for name, v in cpu.items()}
    print(f"{len(images)} photos, runtime {args.runtime}, {args.rounds} rounds, one inference thread")
    print("| variant | CPU ms / image | vs object only |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['cpu_ms_per_image']:.1f} | {r['vs_object_only']:.2f} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runtime": args.runtime, "images": len(images), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
