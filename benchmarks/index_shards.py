"""Sharded index build (issue 14): peak memory of one index vs N parts built one at a time.

    .venv/bin/python benchmarks/index_shards.py                         # 400k x 128-d, flat and ivf, 4 parts
    .venv/bin/python benchmarks/index_shards.py --n 200000 --kinds flat --shards 2,4

1. Writes synthetic features (search_scale.write_synthetic: Parquet shards + manifest).
2. For each kind and each variant (one index; N parts via `build_sharded`), builds the index
   in a fresh child process and reports its seconds and peak RSS (ru_maxrss), and the RSS the
   child had before building (Python + faiss + pyarrow + pandas), so the difference is the
   index build's own.
3. Loads each built index in a fresh child: RSS after loading and after the queries, one-query
   latency (median over single-vector searches, k=10, one faiss thread) and whether the sharded
   answers equal the single index's; the last sharded one also memory-mapped (mmap=True).
Prints a table and writes benchmarks/results/index_shards.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child_build(args: argparse.Namespace) -> dict:
    import faiss  # noqa: F401 - every import before `base`: what follows is the build's own memory
    import pandas  # noqa: F401

    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.retrieval.sharded import build_sharded

    base = max_rss()
    started = time.perf_counter()
    if args.shards == 1:
        FeatureIndex.build(args.features, kind=args.kind).save(args.out)
    else:
        build_sharded(args.features, args.out, args.shards, kind=args.kind)
    return {"seconds": time.perf_counter() - started, "base_rss": base, "peak_rss": max_rss()}


def child_search(args: argparse.Namespace) -> dict:
    import faiss
    import pandas  # noqa: F401 - imported before `base`, like faiss
    import psutil

    from imgfeat.retrieval.sharded import open_index

    # one thread: the 2 cores are shared, and OpenMP's spinning threads under load make
    # single-query latencies mostly noise
    faiss.omp_set_num_threads(1)
    queries = np.load(args.query_file)
    base = psutil.Process().memory_info().rss
    index = open_index(args.out, mmap=args.mmap == "yes")
    loaded = psutil.Process().memory_info().rss
    index.search(queries[:5], k=10)  # warm up
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k=10)
        times.append(time.perf_counter() - t)
    ids = index.search(queries, k=10)[1]
    Path(args.out + ".ids.json").write_text(json.dumps(ids))
    return {"load_rss_delta": loaded - base, "searched_rss_delta": psutil.Process().memory_info().rss - base,
            "median_ms": 1000 * float(np.median(times)),
            "p95_ms": 1000 * float(np.percentile(times, 95))}


def run_child(mode: str, **options: object) -> dict:
    command = [sys.executable, __file__, "--child", mode]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child {command} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=25_000, help="rows per feature file")
    parser.add_argument("--kinds", default="flat,ivf")
    parser.add_argument("--shards", default="2,4", help="comma-separated part counts to compare with one index")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/imgfeat-index-shards")
    parser.add_argument("--json-out", default=str(HERE / "results" / "index_shards.json"))
    parser.add_argument("--child", choices=("build", "search"), help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--query-file", help=argparse.SUPPRESS)
    parser.add_argument("--mmap", default="no", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.shards = int(args.shards) if args.child == "build" else 0
        print(json.dumps(child_build(args) if args.child == "build" else child_search(args)))
        return 0

    import psutil
    from search_scale import write_synthetic

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    features = work / "features"
    started = time.perf_counter()
    write_synthetic(features, args.n, args.dim, 2000, 0.5, 0.0, 0.01, args.chunk, 0)
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    np.save(work / "queries.npy", queries)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "data": {"n": args.n, "dim": args.dim, "files": -(-args.n // args.chunk),
                 "write_seconds": round(time.perf_counter() - started, 1)},
        "command": " ".join(sys.argv), "rows": [],
    }
    print(f"wrote {args.n} x {args.dim}-d in {results['data']['files']} files", flush=True)
    variants = [1] + [int(s) for s in args.shards.split(",") if s]
    for kind in [k for k in args.kinds.split(",") if k]:
        reference = None
        for shards, mapped in [(v, False) for v in variants] + [(variants[-1], True)]:
            out = str(work / f"{kind}-{shards}")
            if not mapped:
                built = run_child("build", features=features, out=out, kind=kind, shards=shards)
            searched = run_child("search", out=out, query_file=work / "queries.npy", mmap="yes" if mapped else "no")
            ids = json.loads(Path(out + ".ids.json").read_text())
            if shards == 1:
                reference = ids
            same = float(np.mean([a == b for a, b in zip(ids, reference)])) if reference else None
            row = {"kind": kind, "shards": shards, "mmap": mapped,
                   "build_seconds": None if mapped else round(built["seconds"], 1),
                   "build_peak_rss_mib": None if mapped else round(built["peak_rss"] / 2**20),
                   "build_rss_over_base_mib":
                       None if mapped else round((built["peak_rss"] - built["base_rss"]) / 2**20),
                   "load_rss_mib": round(searched["load_rss_delta"] / 2**20),
                   "searched_rss_mib": round(searched["searched_rss_delta"] / 2**20),
                   "query_median_ms": round(searched["median_ms"], 3), "query_p95_ms": round(searched["p95_ms"], 3),
                   "top10_same_as_single": same}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    print("\n| kind | parts | build s | build peak RSS MiB | over base MiB | loaded MiB | after queries MiB "
          "| query median ms | p95 ms | top-10 = single |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        parts = f"{r['shards']}" + (" mmap" if r["mmap"] else "")
        print(f"| {r['kind']} | {parts} | {r['build_seconds'] or '-'} | {r['build_peak_rss_mib'] or '-'} | "
              f"{r['build_rss_over_base_mib'] or '-'} | {r['load_rss_mib']} | {r['searched_rss_mib']} | "
              f"{r['query_median_ms']} | {r['query_p95_ms']} | {r['top10_same_as_single']} |")
    out_path = Path(args.json_out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
