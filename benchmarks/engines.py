"""Images/s of the local, Spark and Ray engines on the same files, and what 100 workers would do.

    .venv/bin/python benchmarks/engines.py [--images 200] [--shard-size 25]

Makes N real-photo files from samples/ (random crops and resizes) in a temporary folder, runs
the default models on them with each engine, and measures each engine's per-task overhead
by running an empty task over the same partitions. Prints a table; writes
benchmarks/results/engines.json.

Engine start-up (JVM, Ray processes) is timed apart from the runs: the session is started
first and the run reuses it, as a long job on a cluster would.

Model of n workers: each task is one shard of S images; a worker does r images/s of pure
work, so a task takes S / r seconds plus the overhead o; then
    throughput(n) = n * r / (1 + o / (S / r))
which assumes the driver, storage and network keep up (they do not forever: listing and
planning are serial in the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import imgfeat  # noqa: E402
from imgfeat.runners.tasks import SUMMARY_SCHEMA  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "engines.json"


def make_inputs(folder: Path, count: int, seed: int = 0) -> None:
    photos = []
    for path in sorted((ROOT / "samples").iterdir()):
        if path.suffix.lower() in (".jpg", ".png"):
            with Image.open(path) as opened:
                photos.append(opened.convert("RGB"))
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        scale = rng.uniform(0.5, 0.9)
        cw, ch = int(w * scale), int(h * scale)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(320, 800))
        out = photo.crop((x, y, x + cw, y + ch))
        out = out.resize((side, max(1, side * ch // cw)))
        out.save(folder / f"{i:04d}.jpg", quality=88)


def empty_spark_job(spark, tasks: int) -> float:
    """Seconds of a mapInArrow that does nothing, over `tasks` partitions (one per shard)."""
    import pyarrow as pa

    def nothing(batches):
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([], schema=SUMMARY_SCHEMA)

    rows = spark.sparkContext.parallelize([(i,) for i in range(tasks)], tasks)
    df = spark.createDataFrame(rows, "shard long")
    df.mapInArrow(nothing, "shard long, rows long, failed long, errors string, stage_seconds string").collect()
    start = time.perf_counter()
    df.mapInArrow(nothing, "shard long, rows long, failed long, errors string, stage_seconds string").collect()
    return time.perf_counter() - start


class _Nothing:
    def __call__(self, batch):
        return batch


def empty_ray_job(tasks: int, actors: int) -> float:
    import ray

    from imgfeat.runners.ray_engine import actor_pool

    size, cpus = actor_pool(actors, None)

    def run() -> float:
        start = time.perf_counter()
        ray.data.from_items([{"shard": i} for i in range(tasks)], override_num_blocks=tasks).map_batches(
            _Nothing, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus).take_all()
        return time.perf_counter() - start

    run()
    return run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--engines", default="local,spark1,spark2,ray1,ray2")
    args = parser.parse_args()
    engines = args.engines.split(",")
    work = Path(tempfile.mkdtemp(prefix="imgfeat-engines-"))
    src = work / "in"
    src.mkdir()
    make_inputs(src, args.images)
    tasks = -(-args.images // args.shard_size)
    options = {"progress": False, "shard_size": args.shard_size}
    results = []
    # warm the model files and page cache once
    imgfeat.extract(src, work / "warm", limit=8, **options)
    try:
        for engine in engines:
            out = work / f"out-{engine}"
            entry = {"engine": engine, "images": args.images, "tasks": tasks, "shard_size": args.shard_size}
            if engine == "local":
                report = imgfeat.extract(src, out, **options)
                entry.update(workers="all cores", startup_s=0.0, overhead_s_per_task=0.0)
            elif engine.startswith("spark"):
                from imgfeat.runners.spark import spark_session

                slots = int(engine[5:])
                start = time.perf_counter()
                spark, _ = spark_session(f"local[{slots}]")
                entry["startup_s"] = round(time.perf_counter() - start, 2)
                empty = empty_spark_job(spark, tasks)
                report = imgfeat.extract(src, out, engine="spark", **options)
                spark.stop()
                entry.update(workers=slots, empty_job_s=round(empty, 3),
                             overhead_s_per_task=round(empty * slots / tasks, 3))
            elif engine.startswith("ray"):
                import ray

                actors = int(engine[3:])
                start = time.perf_counter()
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
                entry["startup_s"] = round(time.perf_counter() - start, 2)
                empty = empty_ray_job(tasks, actors)
                report = imgfeat.extract(src, out, engine="ray", engine_options={"actors": actors}, **options)
                ray.shutdown()
                entry.update(workers=actors, empty_job_s=round(empty, 3),
                             overhead_s_per_task=round(empty * actors / tasks, 3))
            else:
                raise SystemExit(f"unknown engine {engine!r}")
            entry.update(seconds=round(report.seconds, 2), images_per_s=round(report.images_per_second, 2),
                         ok=report.ok, failed=report.failed)
            results.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'engine':8} {'workers':>7} {'img/s':>7} {'run s':>7} {'start s':>7} {'overhead s/task':>15}")
    for entry in results:
        print(f"{entry['engine']:8} {entry['workers']:>7} {entry['images_per_s']:>7} {entry['seconds']:>7} "
              f"{entry['startup_s']:>7} {entry['overhead_s_per_task']:>15}")
    model = {}
    for family in ("spark", "ray"):
        one = next((e for e in results if e["engine"] == f"{family}1"), None)
        if one is None:
            continue
        pure_seconds = max(one["seconds"] - one["overhead_s_per_task"] * one["tasks"], 1e-6)
        rate = one["images"] / pure_seconds
        overhead = max(e["overhead_s_per_task"] for e in results if e["engine"].startswith(family))
        task_seconds = args.shard_size / rate
        model[family] = {
            "per_worker_img_s": round(rate, 2), "overhead_s_per_task": overhead,
            "task_s": round(task_seconds, 2),
            "img_s_100_workers": round(100 * rate / (1 + overhead / task_seconds), 1),
            "img_s_100_workers_shard_1000": round(100 * rate / (1 + overhead / (1000 / rate)), 1),
        }
        print(f"{family}: 100 workers ~ {model[family]['img_s_100_workers']} img/s with shards of "
              f"{args.shard_size} ({model[family]['img_s_100_workers_shard_1000']} with shards of 1000); "
              f"per worker {rate:.1f} img/s, overhead {overhead:.3f} s per {task_seconds:.1f} s task")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": f"{os.cpu_count()} cores, shared with other jobs (noisy)",
                                   "command": "python benchmarks/engines.py " + " ".join(sys.argv[1:]),
                                   "runs": results, "model_100_workers": model}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
