"""Reading the members of a tar: imgfeat's archive reader vs opening each member's chained URL.

    python benchmarks/archive_read.py                    # ~20 s on 2 cores
    python benchmarks/archive_read.py --members 4000 --batch 64

One uncompressed tar of N small JPEG-sized members (16 KiB of random bytes each, a WebDataset
shard's shape), on local disk and in fsspec's memory:// store (a stand-in for an object store:
no network, so it shows the per-member work, not latency). Variants, side by side:

    chained   storage.read_bytes("tar://MEMBER::ARCHIVE") per member: fsspec opens the archive
              and indexes all its headers for every member (what a glob source does with a chain)
    batched   ArchiveSource.read(batch): one open per batch, members read in file order at the
              offsets listed once in the driver (imgfeat's tar:// and WebDataset sources)

Bytes only: no decode, no models. One table on stdout, JSON in benchmarks/results/archive_read.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import fsspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "archive_read.json"

from imgfeat.sources import open_source  # noqa: E402
from imgfeat.storage import read_bytes  # noqa: E402


def make_tar(members: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(members):
            for ext, size in (("jpg", 16384), ("json", 64)):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = size
                tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def time_chained(archive: str, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        read_bytes(f"tar://{name}::{archive}", 1 << 20)
    return time.perf_counter() - start


def time_batched(archive: str, batch: int) -> tuple[float, int]:
    source = open_source(archive)
    items, reader = source.list(), source.reader()
    start = time.perf_counter()
    read = 0
    for i in range(0, len(items), batch):
        read += sum(r.content is not None for r in reader.read(items[i:i + batch], 1 << 20))
    return time.perf_counter() - start, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=2000, help="image members in the tar")
    parser.add_argument("--batch", type=int, default=32, help="items per read() call (the chunk size)")
    parser.add_argument("--chained-sample", type=int, default=20,
                        help="members read the chained way (it is quadratic: a sample, scaled per member)")
    args = parser.parse_args()
    data = make_tar(args.members)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "shard.tar")
        Path(local).write_bytes(data)
        fsspec.filesystem("memory").pipe("/bench/shard.tar", data)
        for store, archive in (("local", local), ("memory://", "memory://bench/shard.tar")):
            names = [f"{i:06d}.jpg" for i in range(0, args.members, max(1, args.members // args.chained_sample))]
            chained = time_chained(archive, names) / len(names)
            seconds, read = time_batched(archive, args.batch)
            batched = seconds / max(1, read)
            rows.append({"store": store, "members": args.members, "batch": args.batch,
                         "chained_ms_per_member": chained * 1e3, "batched_ms_per_member": batched * 1e3,
                         "speedup": chained / batched})
        fsspec.filesystem("memory").rm("/bench", recursive=True)
    print(f"{'store':<10} {'members':>8} {'chained ms/member':>18} {'batched ms/member':>18} {'ratio':>8}")
    for r in rows:
        print(f"{r['store']:<10} {r['members']:>8} {r['chained_ms_per_member']:>18.3f} "
              f"{r['batched_ms_per_member']:>18.4f} {r['speedup']:>7.0f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                   "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
