"""Scale check for issue 5: dedup and search over 1M synthetic vectors.

    .venv/bin/python benchmarks/search_scale.py                    # 1M x 128-d, hnsw and ivf
    .venv/bin/python benchmarks/search_scale.py --n 200000 --kinds ivf

1. Writes a synthetic feature dataset (Parquet shards + manifest, as `imgfeat extract` does) in
   chunks: clustered unit vectors (many clusters, wide spread: cluster mates stay below the
   threshold) plus planted near-duplicates (copies of an earlier row with small noise).
2. `find_duplicates` over it: seconds and peak RSS (sampled with psutil), and how many planted
   pairs ended up in one group.
3. For each index kind: build seconds, one-query latency (median and p95 over single-vector
   searches) and recall@10 against exact search (IndexFlatIP) on held-out queries.
Prints a table and writes benchmarks/results/search_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from imgfeat.retrieval.dedup import find_duplicates  # noqa: E402
from imgfeat.schema import output_schema  # noqa: E402


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> "PeakRss":
        self.process = psutil.Process()
        self.peak = self.start = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def write_shard(folder: Path, shard: int, start: int, x: np.ndarray, rng: np.random.Generator,
                schema: pa.Schema) -> None:
    """One Parquet shard of synthetic feature rows (whole-image vectors `x`, sign codes)."""
    m, dim = x.shape
    ids = [f"{start + i:016x}" for i in range(m)]
    table = pa.table({
        "id": ids, "path": [f"synthetic/{i}.jpg" for i in ids], "status": ["ok"] * m, "error": [None] * m,
        "width": pa.array(rng.integers(200, 2000, m), pa.int32()),
        "height": pa.array(rng.integers(200, 2000, m), pa.int32()),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 100, 100], m), pa.float32()), 4),
        "label": [None] * m, "score": pa.array([None] * m, pa.float32()), "crop": ["full:detect-off"] * m,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        "code": pa.array([c.tobytes() for c in np.packbits(x > 0, axis=1)], pa.binary(dim // 8)),
        "detector": ["none"] * m, "embedder": ["synthetic"] * m, "hasher": ["sign"] * m,
    }, schema=schema)
    pq.write_table(table, folder / f"part-{shard:05d}.parquet", compression="zstd")


def write_manifest(folder: Path, shards: int, inputs: int) -> None:
    manifest = {"models": {"detector": "none", "embedder": "synthetic", "hasher": "sign"},
                "config": {}, "num_shards": shards, "inputs": inputs}
    (folder / "_manifest.json").write_text(json.dumps(manifest))


def write_synthetic(folder: Path, n: int, dim: int, clusters: int, noise: float, dup_fraction: float,
                    dup_noise: float, chunk: int, seed: int) -> np.ndarray:
    """Write n rows in shards of `chunk`; returns the planted (source, duplicate) row pairs."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    schema = output_schema(dim, dim // 8, whole_image=False)
    planted = []
    folder.mkdir(parents=True)
    for shard, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        x = centers[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, dim)).astype(np.float32)
        is_dup = rng.random(m) < dup_fraction
        is_dup[0] = False
        dups = np.flatnonzero(is_dup)
        originals = np.flatnonzero(~is_dup)
        # an earlier row of this shard that is not itself a planted copy
        sources = originals[(rng.random(len(dups)) * np.searchsorted(originals, dups)).astype(np.int64)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[dups] = x[sources] + dup_noise * rng.standard_normal((len(dups), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        planted.append(np.stack([sources + start, dups + start], axis=1))
        write_shard(folder, shard, start, x, rng, schema)
    write_manifest(folder, shard + 1, n)
    return np.concatenate(planted)


def vector_batches(folder: Path, dim: int):
    """The ok rows' vectors of a feature folder, batch by batch (bounded memory)."""
    from imgfeat.dataset import embedding_matrix, open_features

    for batch in open_features(folder).iter_batches(["embedding"], status="ok"):
        yield embedding_matrix(batch.column("embedding"), dim)


def exact_top10(folder: Path, dim: int, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 row numbers for the queries, streaming the vectors through IndexFlatIP."""
    import faiss

    flat = faiss.IndexFlatIP(dim)
    for vectors in vector_batches(folder, dim):
        flat.add(vectors)
    return flat.search(queries, 10)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.5, help="per-dimension spread around a cluster centre")
    parser.add_argument("--dup-fraction", type=float, default=0.02)
    parser.add_argument("--dup-noise", type=float, default=0.01, help="per-dimension noise of a planted copy")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--kinds", default="hnsw,ivf", help="index kinds for the search part")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/imgfeat-search-scale")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "search_scale.json"))
    args = parser.parse_args()
    from imgfeat.retrieval.index import FeatureIndex

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    features = work / "features"
    started = time.perf_counter()
    planted = write_synthetic(features, args.n, args.dim, args.clusters, args.noise,
                              args.dup_fraction, args.dup_noise, 100_000, 0)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "data": {"n": args.n, "dim": args.dim, "clusters": args.clusters, "planted_pairs": int(len(planted)),
                 "write_seconds": round(time.perf_counter() - started, 1)},
        "command": " ".join(sys.argv),
    }
    print(f"wrote {args.n} x {args.dim}-d with {len(planted)} planted duplicates in "
          f"{results['data']['write_seconds']} s", flush=True)

    with PeakRss() as rss:
        groups = find_duplicates(features, args.threshold)
    stats = groups.attrs["stats"]
    group_of = dict(zip(groups["id"], groups["group"]))
    found = sum(1 for a, b in planted
                if group_of.get(f"{a:016x}") is not None and group_of.get(f"{a:016x}") == group_of.get(f"{b:016x}"))
    results["dedup"] = {**stats, "peak_rss_gib": round(rss.peak / 2**30, 2),
                        "rss_before_gib": round(rss.start / 2**30, 2),
                        "planted_pairs_grouped": found, "planted_recall": round(found / max(1, len(planted)), 4)}
    print(f"dedup: {stats['seconds_total']} s, peak RSS {results['dedup']['peak_rss_gib']} GiB, "
          f"{stats['groups']} groups, planted recall {results['dedup']['planted_recall']}", flush=True)
    del groups, group_of

    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(args.n, args.queries, replace=False))
    picked, seen = [], 0  # pick the query rows while streaming, to keep memory bounded
    for vectors in vector_batches(features, args.dim):
        lo, hi = np.searchsorted(rows, [seen, seen + len(vectors)])
        picked.append(vectors[rows[lo:hi] - seen])
        seen += len(vectors)
    queries = np.concatenate(picked)
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top10(features, args.dim, queries)
    truth_ids = [[f"{j:016x}" for j in row] for row in truth]

    results["search"] = {}
    for kind in [k for k in args.kinds.split(",") if k]:
        t0 = time.perf_counter()
        with PeakRss() as rss:
            index = FeatureIndex.build(features, kind=kind, codes=(kind == args.kinds.split(",")[0]))
        build = time.perf_counter() - t0
        knob = "ef_search" if kind == "hnsw" else "nprobe"
        sweep = {"hnsw": [32, 64, 128, 256], "ivf": [16, 32, 64, 128], "ivfpq": [16, 32, 64, 128]}.get(kind, [None])
        rows_out = []
        for value in sweep:
            if value is not None:
                index.params[knob] = value
            index.search(queries[:5], k=10)  # warm up
            times = []
            for q in queries:
                t = time.perf_counter()
                _, found_ids = index.search(q[None, :], k=10)
                times.append(time.perf_counter() - t)
            _, all_found = index.search(queries, k=10)
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(all_found, truth_ids)]))
            rows_out.append({knob: value, "median_ms": round(1000 * float(np.median(times)), 3),
                             "p95_ms": round(1000 * float(np.percentile(times, 95)), 3), "recall_at_10": round(recall, 4)})
            print(f"{kind} {knob}={value}: median {rows_out[-1]['median_ms']} ms, p95 {rows_out[-1]['p95_ms']} ms, "
                  f"recall@10 {recall:.3f}", flush=True)
        entry = {"build_seconds": round(build, 1), "peak_rss_gib": round(rss.peak / 2**30, 2), "sweep": rows_out,
                 "params": {k: v for k, v in index.params.items() if k != knob}}
        if index.code_bytes:
            times = []
            codes = np.packbits(queries > 0, axis=1)
            for c in codes:
                t = time.perf_counter()
                index.search_codes(c[None, :], k=10)
                times.append(time.perf_counter() - t)
            entry["hamming_flat_median_ms"] = round(1000 * float(np.median(times)), 3)
        results["search"][kind] = entry
        del index

    print("\n| part | figure |\n|---|---|")
    d = results["dedup"]
    print(f"| dedup {args.n} x {args.dim}-d ({d['kind']}) | {d['seconds_total']} s "
          f"(index {d['seconds_index']} s, search {d['seconds_search']} s), peak RSS {d['peak_rss_gib']} GiB, "
          f"{d['groups']} groups, planted recall {d['planted_recall']} |")
    for kind, entry in results["search"].items():
        for r in entry["sweep"]:
            knob = next(k for k in r if k not in ("median_ms", "p95_ms", "recall_at_10"))
            print(f"| {kind} {knob}={r[knob]} (build {entry['build_seconds']} s) | median {r['median_ms']} ms, "
                  f"p95 {r['p95_ms']} ms, recall@10 {r['recall_at_10']} |")
        if "hamming_flat_median_ms" in entry:
            print(f"| Hamming flat, {args.dim}-bit codes | median {entry['hamming_flat_median_ms']} ms |")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
