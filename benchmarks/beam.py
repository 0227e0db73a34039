"""Images/s of the local runner and the Beam runner (DirectRunner) on the same files, in one run.

    .venv-beam/bin/python benchmarks/beam.py [--images 200] [--shard-size 25]

Needs imgfeat[beam] (its own environment: apache-beam caps pyarrow below 26, see
docs/distributed.md). Makes N real-photo files from samples/ as benchmarks/engines.py does,
runs the default models with each variant, prints a table with the ratio to the local runner
and writes benchmarks/results/beam.json. Variants: local; beam with the DirectRunner's
default here (one worker thread per core, in this process); beam with one worker thread.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imgfeat  # noqa: E402
from engines import make_inputs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "beam.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=25)
    args = parser.parse_args()
    import apache_beam  # noqa: F401  (fail here, not after the local run)

    work = Path(tempfile.mkdtemp(prefix="imgfeat-beam-"))
    src = work / "in"
    src.mkdir()
    make_inputs(src, args.images)
    options = {"progress": False, "shard_size": args.shard_size}
    variants = {
        "local": {},
        "beam-direct": {"engine": "beam"},
        "beam-direct-1": {"engine": "beam", "engine_options": {"pipeline_args": ["--direct_num_workers=1"]}},
    }
    results = []
    imgfeat.extract(src, work / "warm", limit=8, **options)  # model files and page cache
    try:
        for name, extra in variants.items():
            start = time.perf_counter()
            report = imgfeat.extract(src, work / f"out-{name}", **options, **extra)
            wall = time.perf_counter() - start
            entry = {"variant": name, "images": args.images, "shard_size": args.shard_size,
                     "seconds": round(wall, 2), "images_per_s": round(args.images / wall, 2),
                     "ok": report.ok, "failed": report.failed}
            results.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local = results[0]["seconds"]
    print(f"\n{'variant':14} {'img/s':>7} {'run s':>7} {'x local time':>12}")
    for entry in results:
        entry["time_vs_local"] = round(entry["seconds"] / local, 2)
        print(f"{entry['variant']:14} {entry['images_per_s']:>7} {entry['seconds']:>7} {entry['time_vs_local']:>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": f"{os.cpu_count()} cores, shared with other jobs (noisy)",
                                   "command": "python benchmarks/beam.py " + " ".join(sys.argv[1:]),
                                   "runs": results}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
