"""What an incremental `imgfeat extract` costs: adding 1 % to an output of N, and listing.

    .venv/bin/python benchmarks/incremental.py [--images 2000] [--shard-size 100] [--added 0.01]
                                               [--files 100000] [--memory-entries 1000000]

1. Incremental runs (tiny test models: detector test-blob, embedder test-tiny, so the fixed
   costs of a run are not hidden behind model time): a full run over N small images, then
   1 % more images added and the same command rerun, then a rerun with nothing new. Each
   rerun's seconds against the full run's; the rerun's plan (listing, reading the ids of the
   output's shards, which is what finds the new inputs) timed apart.
2. Listing: `open_source(folder).list()` + `sinks.fingerprint` over F empty files in a
   temporary folder (100 subfolders), and over a memory:// filesystem of M entries; seconds
   and peak Python memory (tracemalloc, a second pass, so the timing runs without it).
3. Reading the output's ids (what a rerun does per shard) with 1 thread and with
   sinks.ID_READ_THREADS threads.

Prints a table; writes benchmarks/results/incremental.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import imgfeat  # noqa: E402
from imgfeat import sinks  # noqa: E402
from imgfeat.sources import open_source  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "incremental.json"
MODELS = {"detector": "test-blob", "embedder": "test-tiny", "workers": 1, "progress": False}


def blob_images(folder: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        image = np.full((200, 300, 3), 255, np.uint8)
        x = 10 + i % 120
        image[50:120, x:x + 120] = (200, (i * 7) % 256, 30)
        Image.fromarray(image).save(folder / f"{i:06d}.jpg", quality=85)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def peak_mib(function: Callable[[], Any]) -> float:
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def incremental(work: Path, images: int, shard_size: int, share: float) -> dict[str, Any]:
    src, out = work / "src", work / "out"
    src.mkdir()
    blob_images(src, 0, images)
    full = imgfeat.extract(src, out, shard_size=shard_size, **MODELS)
    added = max(1, round(images * share))
    blob_images(src, images, added)
    plan_seconds = _plan_seconds(src, out, shard_size)
    rerun = imgfeat.extract(src, out, shard_size=shard_size, **MODELS)
    nothing = imgfeat.extract(src, out, shard_size=shard_size, **MODELS)
    assert rerun.processed == added and nothing.processed == 0
    return {"images": images, "added": added, "shard_size": shard_size,
            "full_seconds": full.seconds, "rerun_seconds": rerun.seconds, "noop_seconds": nothing.seconds,
            "rerun_ratio": rerun.seconds / full.seconds, "noop_ratio": nothing.seconds / full.seconds,
            "full_load_seconds": full.stage_seconds.get("load", 0.0),
            "rerun_load_seconds": rerun.stage_seconds.get("load", 0.0),
            "noop_load_seconds": nothing.stage_seconds.get("load", 0.0),
            "rerun_ratio_without_load": (rerun.seconds - rerun.stage_seconds.get("load", 0.0))
            / (full.seconds - full.stage_seconds.get("load", 0.0)),
            "rerun_listing_seconds": plan_seconds["listing"], "rerun_ids_seconds": plan_seconds["ids"],
            "full_images_per_second": full.images_per_second}


def _plan_seconds(src: Path, out: Path, shard_size: int) -> dict[str, float]:
    """What a rerun spends finding the new inputs: listing the source, reading the output's ids."""
    listing, items = timed(lambda: open_source(str(src)).list())
    sink = sinks.ParquetSink(str(out))
    ids, present = timed(lambda: sink.ids(sorted(sink.completed_indexes())))
    assert len(present) < len(items)
    return {"listing": listing, "ids": ids}


def listing_local(work: Path, files: int) -> dict[str, Any]:
    folder = work / "many"
    per_dir = max(1, files // 100)
    made = 0
    for d in range(100):
        sub = folder / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(min(per_dir, files - made)):
            (sub / f"{i:06d}.jpg").touch()
        made += min(per_dir, files - made)
    return _listing(str(folder), made, "local folder")


def listing_memory(entries: int) -> dict[str, Any]:
    import fsspec
    from fsspec.implementations.memory import MemoryFile

    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.extend(["", "/bench"])
    for i in range(entries):
        path = f"/bench/{i:08d}.jpg"
        fs.store[path] = MemoryFile(fs, path, b"")
    try:
        return _listing("memory://bench", entries, "memory:// (flat)")
    finally:
        fs.store.clear()


def _listing(location: str, count: int, label: str) -> dict[str, Any]:
    def list_and_fingerprint() -> tuple[int, str]:
        items = open_source(location).list()
        return len(items), sinks.fingerprint(items)

    seconds, (listed, _) = timed(list_and_fingerprint)
    assert listed == count, (listed, count)
    peak = peak_mib(list_and_fingerprint)
    return {"where": label, "entries": count, "seconds": seconds, "fingerprint_only_seconds": None,
            "entries_per_second": count / seconds, "peak_mib": peak, "bytes_per_entry": peak * 2**20 / count}


def id_reads(out: Path) -> list[dict[str, Any]]:
    sink = sinks.ParquetSink(str(out))
    indexes = sorted(sink.completed_indexes())
    rows = []
    for threads in (1, sinks.ID_READ_THREADS):
        sinks.ID_READ_THREADS, saved = threads, sinks.ID_READ_THREADS
        try:
            seconds, present = timed(lambda: sink.ids(indexes))
        finally:
            sinks.ID_READ_THREADS = saved
        rows.append({"threads": threads, "shards": len(indexes), "ids": len(present), "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--added", type=float, default=0.01, help="share of images added (default 0.01)")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--memory-entries", type=int, default=1_000_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgfeat-incremental-"))
    try:
        runs = incremental(work, args.images, args.shard_size, args.added)
        reads = id_reads(work / "out")
        listings = [listing_local(work, args.files)]
        if args.memory_entries:
            listings.append(listing_memory(args.memory_entries))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nincremental run: {runs['images']} images at {runs['full_images_per_second']:.0f} img/s, "
          f"then {runs['added']} added ({args.added:.0%}); shard size {runs['shard_size']}")
    print(f"{'run':<28}{'seconds':>10}{'vs full':>10}")
    print(f"{'full':<28}{runs['full_seconds']:>10.2f}{1:>10.3f}")
    print(f"{'  of which: model load':<28}{runs['full_load_seconds']:>10.3f}"
          f"{runs['full_load_seconds'] / runs['full_seconds']:>10.3f}")
    print(f"{'rerun, 1 % added':<28}{runs['rerun_seconds']:>10.2f}{runs['rerun_ratio']:>10.3f}")
    print(f"{'  of which: model load':<28}{runs['rerun_load_seconds']:>10.3f}"
          f"{runs['rerun_load_seconds'] / runs['full_seconds']:>10.3f}")
    print(f"{'rerun less model load':<28}{runs['rerun_seconds'] - runs['rerun_load_seconds']:>10.2f}"
          f"{runs['rerun_ratio_without_load']:>10.3f}  (full run less its load = 1)")
    print(f"{'  of which: listing':<28}{runs['rerun_listing_seconds']:>10.3f}"
          f"{runs['rerun_listing_seconds'] / runs['full_seconds']:>10.3f}")
    print(f"{'  of which: output ids':<28}{runs['rerun_ids_seconds']:>10.3f}"
          f"{runs['rerun_ids_seconds'] / runs['full_seconds']:>10.3f}")
    print(f"{'rerun, nothing new':<28}{runs['noop_seconds']:>10.2f}{runs['noop_ratio']:>10.3f}")
    print(f"\nreading the output's ids ({reads[0]['shards']} shards, {reads[0]['ids']} ids)")
    for row in reads:
        print(f"  {row['threads']:>2} threads {row['seconds']:>8.3f} s")
    print(f"\n{'listing + fingerprint':<22}{'entries':>10}{'seconds':>10}{'entries/s':>12}{'peak MiB':>10}{'B/entry':>9}")
    for row in listings:
        print(f"{row['where']:<22}{row['entries']:>10}{row['seconds']:>10.2f}{row['entries_per_second']:>12.0f}"
              f"{row['peak_mib']:>10.1f}{row['bytes_per_entry']:>9.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "incremental": runs,
                                   "id_reads": reads, "listing": listings}, indent=2))
    print(f"\nwritten {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
