"""Distributed dedup (issue 14): local vs Spark vs Ray grouping of the same synthetic vectors.

    .venv/bin/python benchmarks/dedup_distributed.py                       # 200k x 128-d, all three
    .venv/bin/python benchmarks/dedup_distributed.py --n 1000000 --engines local,ray
    .venv/bin/python benchmarks/dedup_distributed.py --n 1000000 --using embedding,code   # both, one run

1. Writes a synthetic feature dataset (Parquet shards + manifest, as `imgfeat extract`):
   clustered unit vectors (cluster mates stay below the threshold) and planted near-duplicates
   (noisy copies of earlier rows), as benchmarks/search_scale.py.
2. Runs each engine in its own process (local: `find_duplicates`, IVF above 100k; spark: local[C];
   ray: a local instance with C CPUs) and samples the resident memory of that process and all its
   children (Spark's JVM and Python workers, Ray's raylet and workers) every 50 ms.
3. Prints seconds, vectors per second per core, peak memory, and whether the groups equal the
   local ones (same member sets), then writes benchmarks/results/dedup_distributed.json.
   --using code groups the rows' 128-bit sign codes instead (`dedup --using code`, Hamming
   distance <= the threshold's match floor(bits * acos(T) / pi): 12 of 128 bits at 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from imgfeat.schema import output_schema  # noqa: E402
from search_scale import write_manifest, write_shard  # noqa: E402  (benchmarks/ is on sys.path)


def write_synthetic(folder: Path, n: int, dim: int, shard_rows: int, seed: int = 0) -> int:
    """n rows in shards: 2000 wide clusters and 2 % planted copies (noise 0.01 per dimension)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((2000, dim)).astype(np.float32)
    schema = output_schema(dim, dim // 8, whole_image=False)
    folder.mkdir(parents=True)
    planted = 0
    for shard, start in enumerate(range(0, n, shard_rows)):
        m = min(shard_rows, n - start)
        x = centers[rng.integers(0, len(centers), m)] + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        copies = np.flatnonzero(rng.random(m) < 0.02)
        copies = copies[copies > 0]
        x[copies] = x[(rng.random(len(copies)) * copies).astype(np.int64)] + 0.01 * rng.standard_normal(
            (len(copies), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        planted += len(copies)
        write_shard(folder, shard, start, x, rng, schema)
    write_manifest(folder, shard + 1, n)
    return planted


def run_one(engine: str, features: str, threshold: float, cores: int, out: str, using: str) -> None:
    """In the child process: group with one engine, write the groups and the stats."""
    if engine == "spark":
        from imgfeat.runners.spark import spark_session

        spark, _ = spark_session(f"local[{cores}]")
        spark.conf.set("spark.sql.shuffle.partitions", str(2 * cores))
    elif engine == "ray":
        import ray

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from imgfeat.retrieval.dedup import dedup_engine

    started = time.perf_counter()
    groups = dedup_engine(engine)(features, threshold, using=using)
    seconds = time.perf_counter() - started
    groups[["group", "id"]].to_parquet(out + ".parquet")
    Path(out + ".json").write_text(json.dumps({**groups.attrs["stats"], "seconds": seconds}))


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(engine: str, features: Path, threshold: float, cores: int, work: Path, using: str) -> dict:
    out = str(work / f"{using}-{engine}")
    child = subprocess.Popen([sys.executable, __file__, "--run-one", engine, "--features", str(features),
                              "--threshold", str(threshold), "--cores", str(cores), "--out", out,
                              "--using", using],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.05)
    if child.returncode:
        raise SystemExit(f"{engine} failed:\n{child.stderr.read()[-3000:]}")
    stats = json.loads(Path(out + ".json").read_text())
    return {**stats, "peak_rss_gib": round(peak / 2**30, 2)}


def groups_of(path: Path) -> set[frozenset]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return {frozenset(ids) for ids in frame.groupby("group")["id"].agg(list)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shard-rows", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--engines", default="local,spark,ray")
    parser.add_argument("--using", default="embedding",
                        help="what is compared: embedding (cosine), code (Hamming), or both: embedding,code")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores given to Spark and Ray")
    parser.add_argument("--workdir", default="/tmp/imgfeat-dedup-distributed")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "dedup_distributed.json"))
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, args.features, args.threshold, args.cores, args.out, args.using)
        return 0

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    features = work / "features"
    started = time.perf_counter()
    planted = write_synthetic(features, args.n, args.dim, args.shard_rows)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
                    "note": "a shared machine: other jobs ran at the same time"},
        "data": {"n": args.n, "dim": args.dim, "files": len(list(features.glob("*.parquet"))),
                 "planted_copies": planted, "write_seconds": round(time.perf_counter() - started, 1)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "cores": args.cores, "runs": {},
    }
    print(f"wrote {args.n} x {args.dim}-d ({planted} planted copies) in {results['data']['write_seconds']} s",
          flush=True)
    engines = args.engines.split(",")
    for using in args.using.split(","):
        runs = results["runs"][using] = {}
        for engine in engines:
            row = measure(engine, features, args.threshold, args.cores, work, using)
            row["vectors_per_second_per_core"] = round(row["vectors"] / row["seconds"] / args.cores, 1)
            runs[engine] = row
            print(f"{using} {engine}: {row['seconds']:.1f} s, {row['groups']} groups, peak {row['peak_rss_gib']} GiB",
                  flush=True)
        if "local" in engines:
            reference = groups_of(work / f"{using}-local.parquet")
            for engine in engines:
                found = groups_of(work / f"{using}-{engine}.parquet")
                runs[engine]["same_groups_as_local"] = found == reference
                runs[engine]["groups_differing"] = len(found ^ reference)
                runs[engine]["speed_vs_local"] = round(runs["local"]["seconds"] / runs[engine]["seconds"], 2)

    print(f"\n{args.n} x {args.dim}-d, threshold {args.threshold}, {args.cores} cores for spark/ray "
          f"(load average at start {results['machine']['load_average_at_start'][0]:.1f})")
    print(f"{'using':10} {'engine':8} {'seconds':>8} {'vec/s/core':>11} {'peak GiB':>9} {'pairs':>8} {'groups':>7} "
          f"{'same as local':>14} {'x local':>8}")
    for using, runs in results["runs"].items():
        for engine, row in runs.items():
            print(f"{using:10} {engine:8} {row['seconds']:8.1f} {row['vectors_per_second_per_core']:11.0f} "
                  f"{row['peak_rss_gib']:9.2f} {row['pairs']:8d} {row['groups']:7d} "
                  f"{str(row.get('same_groups_as_local', '-')):>14} {row.get('speed_vs_local', '-'):>8}")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
