"""Per-core rates and per-task overheads, the inputs of docs/scale.md's projection.

    .venv/bin/python benchmarks/scale.py                         # everything (~3-5 min on 2 cores)
    .venv/bin/python benchmarks/scale.py --skip engines --images 24

In one run, each part at 1 and 2 threads (or workers) where that means something:

1. extract: `imgfeat.extract` over JPEGs made from samples/ (benchmarks/engines.py make_inputs),
   the default models, runtime onnxruntime fp32 and the default runtime ("auto": OpenVINO bf16
   on CPUs with native bf16). CPU seconds per image (this process, every thread: read, decode,
   detect, embed, write) from the difference of a run over a fifth of the images and one over
   all of them, at 1 inference thread, so model loading is left out; wall img/s at 1 and 2
   threads beside them.
2. engine overhead per task: an empty mapInArrow over 16 partitions (Spark local[1], local[2])
   and an empty actor-pool map_batches over 16 blocks (Ray, 1 and 2 actors): benchmarks/engines.py.
3. dedup: `find_duplicates` (exact below 100k vectors) over synthetic 1280-d unit vectors
   (benchmarks/search_scale.py write_synthetic), faiss on 1 and 2 threads: pairs compared per
   second per core.
4. index: an IVF-PQ index (what "auto" picks once vectors pass 8 GiB) with FeatureIndex's default
   parameters for n vectors, trained on its sample and then filled, timed apart, over synthetic
   1280-d vectors in memory (reading shards not included), 1 and 2 threads: vectors added per
   second per core, and the same as GFLOP/s (coarse assignment + PQ encoding) to rescale to
   other nlist values.

Prints a table and writes benchmarks/results/scale.json. The machine may be shared: the load
average before and after each part is recorded next to its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import imgfeat  # noqa: E402
from engines import empty_ray_job, empty_spark_job, make_inputs  # noqa: E402
from search_scale import write_synthetic  # noqa: E402

RESULTS = HERE / "results" / "scale.json"


def load() -> float:
    return round(os.getloadavg()[0], 1)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system  # this process, all its threads


def extract_rates(images: int, work: Path) -> list[dict]:
    """Per runtime: CPU seconds per image from two runs at 1 thread (few and all images: the
    difference leaves model loading out), and wall img/s at 1 and 2 threads."""
    folder, few = work / "photos", work / "few"
    folder.mkdir()
    few.mkdir()
    make_inputs(folder, images)
    small = max(4, images // 5)
    for path in sorted(folder.iterdir())[:small]:
        shutil.copy(path, few / path.name)
    rows = []
    for runtime, precision in (("onnxruntime", "fp32"), ("auto", "auto")):
        cpu = {}
        # the first run warms up (imports, first-call caches) and is not counted
        for threads, inputs in ((1, few), (1, few), (1, folder), (2, folder)):
            out = work / "out"
            before, cpu_before = load(), cpu_seconds()
            report = imgfeat.extract(inputs, out, runtime=runtime, precision=precision, threads=threads,
                                     workers=1, progress=False)
            used = cpu_seconds() - cpu_before
            shutil.rmtree(out)
            if threads == 1:
                cpu[inputs.name] = (report.processed, used)
            if inputs is few:
                continue
            row = {"part": "extract", "variant": f"{runtime}/{precision}, {threads} thread(s)", "threads": threads,
                   "images": report.processed, "wall_s": round(report.seconds, 2),
                   "wall_img_s": round(report.images_per_second, 2), "cpu_s": round(used, 2),
                   "stage_s": {k: round(v, 2) for k, v in report.stage_seconds.items()},
                   "load_before": before, "load_after": load()}
            if threads == 1:
                (n0, c0), (n1, c1) = cpu["few"], cpu[folder.name]
                row["cpu_s_per_image"] = round((c1 - c0) / (n1 - n0), 4)
            rows.append(row)
            print(f"extract {row['variant']}: {row['wall_img_s']} img/s wall, {row.get('cpu_s_per_image', '-')} "
                  f"CPU s/img (load {before} -> {row['load_after']})", flush=True)
    return rows


def engine_overheads(tasks: int) -> list[dict]:
    rows = []
    from imgfeat.runners.spark import spark_session

    for cores in (1, 2):
        before = load()
        spark, _ = spark_session(f"local[{cores}]")
        seconds = empty_spark_job(spark, tasks)
        spark.stop()
        rows.append({"part": "engine", "variant": f"spark local[{cores}]", "workers": cores, "tasks": tasks,
                     "s_per_task": round(seconds * cores / tasks, 3), "job_s": round(seconds, 2),
                     "load_before": before, "load_after": load()})
        print(f"engine {rows[-1]['variant']}: {rows[-1]['s_per_task']} s/task", flush=True)
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for actors in (1, 2):
            before = load()
            seconds = empty_ray_job(tasks, actors)
            rows.append({"part": "engine", "variant": f"ray, {actors} actor(s)", "workers": actors, "tasks": tasks,
                         "s_per_task": round(seconds * actors / tasks, 3), "job_s": round(seconds, 2),
                         "load_before": before, "load_after": load()})
            print(f"engine {rows[-1]['variant']}: {rows[-1]['s_per_task']} s/task", flush=True)
    finally:
        ray.shutdown()
    return rows


def dedup_rates(n: int, dim: int, work: Path) -> list[dict]:
    import faiss

    from imgfeat.retrieval.dedup import find_duplicates

    folder = work / "dedup"
    write_synthetic(folder, n, dim, 200, 0.5, 0.02, 0.01, 10_000, 0)
    rows = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        before = load()
        start = time.perf_counter()
        groups = find_duplicates(folder, 0.95, vector="auto")
        seconds = time.perf_counter() - start
        pairs = n * (n - 1) / 2
        rows.append({"part": "dedup", "variant": f"exact, {n} x {dim}-d, {threads} thread(s)", "threads": threads,
                     "vectors": n, "dim": dim, "seconds": round(seconds, 2),
                     "pairs_per_s_per_core": round(pairs / seconds / threads),
                     "gflops_per_core": round(2.0 * dim * pairs / seconds / threads / 1e9, 2),
                     "groups": int(groups["group"].nunique()) if len(groups) else 0,
                     "load_before": before, "load_after": load()})
        print(f"dedup {rows[-1]['variant']}: {rows[-1]['seconds']} s, "
              f"{rows[-1]['pairs_per_s_per_core']:.3g} pairs/s/core", flush=True)
    return rows


def index_rates(n: int, dim: int) -> list[dict]:
    """IVF-PQ train and add, timed apart (FeatureIndex.build does both, plus reading the shards)."""
    import faiss
    import numpy as np

    from imgfeat.retrieval.faiss_kinds import get_kind

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((200, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    kind = get_kind("ivfpq")
    params = kind.default_params(n, dim)
    sample = vectors[:min(n, params["nlist"] * 64)]
    rows = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        before = load()
        index = kind.new(dim, params)
        start = time.perf_counter()
        index.train(sample)
        train = time.perf_counter() - start
        start = time.perf_counter()
        index.add(vectors)
        add = time.perf_counter() - start
        # per added vector: the coarse assignment (nlist dot products) and the PQ encoding (256 per sub-vector)
        flops = 2.0 * dim * (params["nlist"] + 256)
        rows.append({"part": "index", "variant": f"ivfpq add, {n} x {dim}-d, {threads} thread(s)", "threads": threads,
                     "vectors": n, "dim": dim, "params": params, "train_vectors": len(sample),
                     "train_s": round(train, 2), "add_s": round(add, 2),
                     "vectors_per_s_per_core": round(n / add / threads),
                     "add_gflops_per_core": round(flops * n / add / threads / 1e9, 2),
                     "load_before": before, "load_after": load()})
        print(f"index {rows[-1]['variant']}: train {rows[-1]['train_s']} s ({len(sample)} vectors), add "
              f"{rows[-1]['add_s']} s = {rows[-1]['vectors_per_s_per_core']} vectors/s/core "
              f"(~{rows[-1]['add_gflops_per_core']} GFLOP/s/core)", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=16, help="empty engine tasks per job")
    parser.add_argument("--dedup-n", type=int, default=10_000)
    parser.add_argument("--index-n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1280, help="vector size (mobilenet-v2's is 1280)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: extract,engines,dedup,index")
    parser.add_argument("--json-out", default=str(RESULTS))
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    results = {"command": " ".join(sys.argv), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                         "load_at_start": os.getloadavg()},
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    with tempfile.TemporaryDirectory(prefix="imgfeat-scale-") as tmp:
        work = Path(tmp)
        if "extract" not in skip:
            results["rows"] += extract_rates(args.images, work)
        if "engines" not in skip:
            results["rows"] += engine_overheads(args.tasks)
        if "dedup" not in skip:
            results["rows"] += dedup_rates(args.dedup_n, args.dim, work)
        if "index" not in skip:
            results["rows"] += index_rates(args.index_n, args.dim)
    results["machine"]["load_at_end"] = os.getloadavg()

    print(f"\n{'part':8} {'variant':44} {'figure':>36} {'load':>11}")
    for row in results["rows"]:
        figure = {"extract": lambda r: f"{r.get('cpu_s_per_image', '-')} CPU s/img ({r['wall_img_s']} img/s)",
                  "engine": lambda r: f"{r['s_per_task']} s/task",
                  "dedup": lambda r: f"{r['pairs_per_s_per_core']:.3g} pairs/s/core ({r['gflops_per_core']} GF)",
                  "index": lambda r: f"{r['vectors_per_s_per_core']} vec/s/core, train {r['train_s']} s"}[row["part"]](row)
        print(f"{row['part']:8} {row['variant']:44} {figure:>36} {row['load_before']:>5}->{row['load_after']:<5}")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
