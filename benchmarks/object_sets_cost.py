"""What `extract --objects K` costs in time: the near-duplicate benchmark's images through the
pipeline with K = 0 (the main object only), 3 and 5, interleaved, each `--repeats` times.

    OMP_NUM_THREADS=1 python benchmarks/object_sets_cost.py --photos eval_photos/

Each extra object is one more crop in the embedder's batch; detection is unchanged. Reports per K
the best wall time and its detect / embed stage seconds (stages.StageTimer), and the mean objects
per image. Results: stdout and benchmarks/results/object_sets_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from imgfeat.neardup_data import PipelineEmbedder, build_benchmark, load_photos, load_variants  # noqa: E402
from imgfeat.stages import StageTimer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--objects", default="0,3,5", help="values of K, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "object_sets_cost.json"))
    args = parser.parse_args()

    names, photos = load_photos(args.photos)
    extras, variants = load_variants(args.photos, names)
    # the benchmark exactly as `imgfeat eval neardup` builds it (distractors avoid the main object)
    located = PipelineEmbedder("centernet-mbv3", "test-tiny").encode(photos)
    benchmark = build_benchmark(names, photos, 3, 0, list(located.boxes), extras=extras, variants=variants)
    images = benchmark.database + benchmark.queries
    ks = [int(k) for k in args.objects.split(",")]
    encoders = {k: PipelineEmbedder("centernet-mbv3", "mobilenet-v2", objects=k) for k in ks}
    for encoder in encoders.values():
        encoder.encode(images[:16])  # warm-up
    runs: dict[int, list[dict[str, float]]] = {k: [] for k in ks}
    mean_objects = {}
    for _ in range(args.repeats):
        for k, encoder in encoders.items():
            encoder.features.timer = StageTimer()
            start = time.perf_counter()
            encoded = encoder.encode(images)
            runs[k].append({"wall": time.perf_counter() - start, **encoder.features.timer.seconds})
            mean_objects[k] = float(encoded.objects.counts.mean()) if encoded.objects is not None else 1.0
    best = {k: min(r, key=lambda run: run["wall"]) for k, r in runs.items()}
    print(f"{len(images)} images ({len(benchmark.database)} database, {len(benchmark.queries)} queries)")
    print("| K | objects per image | wall s | detect s | embed s |")
    print("|---:|---:|---:|---:|---:|")
    for k, run in best.items():
        print(f"| {k} | {mean_objects[k]:.2f} | {run['wall']:.1f} | {run['detect']:.1f} | {run['embed']:.1f} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"photos": args.photos, "images": len(images), "mean_objects": mean_objects,
                               "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
