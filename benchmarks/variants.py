"""`imgfeat.extract` with several option sets, interleaved run by run, medians compared.

    python benchmarks/variants.py                                   # --streams 1..4, 3 rounds
    python benchmarks/variants.py --images 300 --rounds 4 \\
        --variant 'ort={"runtime": "onnxruntime"}' --variant 'ov={"runtime": "openvino"}'

On a shared machine one run per variant says little: its speed drifts by 5-15 % from minute
to minute. Here every round runs each variant once, in turn, each in a fresh process on the
same photos (made from samples/ as benchmarks/throughput.py makes them), and the table shows
the median and best images/s and the median CPU seconds per variant. Results: a table on
stdout and benchmarks/results/variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "variants.json"
DEFAULT_VARIANTS = {f"streams={n}": {"streams": n} for n in (1, 2, 3, 4)}


def one_run(folder: str, out: str, options: dict) -> dict:
    """Run extract here (a fresh process) and report wall and CPU seconds."""
    import resource
    import time

    import imgfeat

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cpu_start, start = cpu(), time.perf_counter()
    report = imgfeat.extract(folder, out, progress=False, overwrite=True, **options)
    return {"images": report.processed, "seconds": time.perf_counter() - start, "cpu_seconds": cpu() - cpu_start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150, help="photos per run (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME={"option": value}',
                        help="an option set for imgfeat.extract (repeatable; default: --streams 1 to 4)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run:  # one measurement, in its own process
        folder, out, options = args._run
        print(json.dumps(one_run(folder, out, json.loads(options))))
        return 0

    variants = DEFAULT_VARIANTS
    if args.variant:  # NAME={...}: the name may hold "=" itself, the options start at "={"
        variants = {v.split("={", 1)[0]: json.loads("{" + v.split("={", 1)[1]) for v in args.variant}
    sys.path.insert(0, str(HERE))
    from throughput import make_photos

    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="imgfeat-variants-") as tmp:
        make_photos(Path(tmp) / "photos", args.images)
        for round_ in range(args.rounds):
            for name, options in variants.items():
                done = subprocess.run([sys.executable, __file__, "--_run", str(Path(tmp) / "photos"),
                                       str(Path(tmp) / "out"), json.dumps(options)],
                                      capture_output=True, text=True, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                row = runs[name][-1]
                print(f"round {round_ + 1} {name}: {row['images'] / row['seconds']:.2f} img/s", file=sys.stderr)

    rows = []
    for name, measured in runs.items():
        rates = [r["images"] / r["seconds"] for r in measured]
        rows.append({"variant": name, "options": variants[name], "median_images_per_s": round(statistics.median(rates), 2),
                     "best_images_per_s": round(max(rates), 2),
                     "median_cpu_s": round(statistics.median(r["cpu_seconds"] for r in measured), 1), "runs": measured})
    base = rows[0]["median_images_per_s"]
    lines = ["| variant | median img/s | best img/s | vs first | median CPU s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['median_images_per_s']:.2f} | {r['best_images_per_s']:.2f} | "
              f"{r['median_images_per_s'] / base:.2f} | {r['median_cpu_s']:.1f} |" for r in rows]
    print("\n".join(lines))
    result = {"images": args.images, "rounds": args.rounds, "cpus": os.cpu_count(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
