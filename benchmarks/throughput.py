"""Throughput of imgfeat against the ceiling and the usual alternatives, in one invocation.

    python benchmarks/throughput.py                 # 300 photos, every row, ~10 min on 2 cores
    python benchmarks/throughput.py --quick         # 60 photos, for a smoke run
    python benchmarks/throughput.py --skip-engines  # no Ray / Spark rows

Rows, all on the same JPEGs made from samples/ (random crops resized to product-photo
sizes, quality 90, fixed seed) and the same default models (CenterNet-MobileNetV3 detector,
MobileNetV2 embedder):

    model-only    the two networks on tensors already in memory (the ceiling), imgfeat's
                  default runtime and batch sizes: the detector once and the embedder twice
                  per image (main-object crop and whole image, the two vectors imgfeat stores;
                  the whole image at its aspect step, as imgfeat embeds it by default)
    imgfeat       `imgfeat.extract` from files to Parquet, default settings, fresh output
    imgfeat-X     the same with the runtime `auto` did not pick (X = openvino or
    model-only-X  onnxruntime), to separate what the runtime gives from the pipeline
    naive         PIL open -> resize -> detect -> crop -> embed crop and image, one at a time
    ray           Ray Data: read_binary_files -> map_batches(decode) -> map_batches(actor)
    spark         PySpark local mode: binaryFile -> mapInPandas, model loaded once per worker
    rss 1x / 5x   peak memory (ru_maxrss) of the imgfeat run at two dataset sizes, each in a
                  fresh subprocess

The baselines are written the plain way and do not use imgfeat's runner; they reuse its
model classes (same networks, same letterbox, same CenterNet decoding from the same score
floor) at imgfeat's batch sizes for the CPU, with onnxruntime (--baseline-runtime changes
it): they differ from imgfeat in the runner only. Ray and Spark run in
subprocesses; their start-up (ray.init, SparkSession) is reported apart, not timed.
Results: a table on stdout and benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
RESULTS = ROOT / "benchmarks" / "results" / "throughput.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import cpu_flags  # noqa: E402  (the CPU flags that decide the fast paths)
SIZES = ((640, 480), (800, 800), (480, 640), (800, 600), (1024, 768), (600, 600))
SCORE_THRESHOLD = 0.3


# ----------------------------------------------------------------------------- data

def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs (q90) cut from samples/ at random and resized to product-photo sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as image:
                sources.append(image.convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        width, height = SIZES[int(rng.integers(len(SIZES)))]
        keep = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(source.width * keep), int(source.height * keep)
        left = int(rng.integers(0, source.width - crop_w + 1))
        top = int(rng.integers(0, source.height - crop_h + 1))
        photo = source.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR)
        path = folder / f"photo_{i:05d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def _detector_batches(images: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """The detector's inputs as imgfeat makes them: aspect kept, long side 512, a batch at
    the largest height and width of its images (models/detectors.py)."""
    from imgfeat.models.centernet import input_shape_for
    from imgfeat.models.preprocess import letterbox

    batches = []
    for first in range(0, len(images), batch):
        group = images[first:first + batch]
        shapes = [input_shape_for(*image.shape[:2]) for image in group]
        tensor = np.zeros((len(group), max(h for h, _ in shapes), max(w for _, w in shapes), 3), np.float32)
        for image, slot in zip(group, tensor):
            letterbox(image, 512, "linear", out=slot)
        batches.append(tensor)
    return batches


# ----------------------------------------------------------------------------- rows

def model_only(paths: list[Path], runtime: str, streams: int = 1, precision: str = "auto") -> dict:
    """The detector and embedder networks alone on tensors prepared in memory beforehand, at
    imgfeat's default batch sizes for the CPU. `streams` > 1 runs that many threads at once,
    each with imgfeat's threads per stream; 1 runs one stream with the runtime's default
    threads (every core)."""
    from concurrent.futures import ThreadPoolExecutor

    from imgfeat.config import PipelineConfig
    from imgfeat.models import create_detector, create_embedder
    from imgfeat.models.preprocess import aspect_size, to_tensor

    config = PipelineConfig.from_options(streams=streams)
    threads = config.inference_threads
    det_batch, emb_batch = config.detect_batch_size, config.embed_batch_size
    detector = create_detector("centernet-mbv3", runtime=runtime, threads=threads, precision=precision)
    embedder = create_embedder("mobilenet-v2", runtime=runtime, threads=threads, precision=precision)
    chunk = config.chunk_size
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:max(chunk, emb_batch)]]
    det_tensors = _detector_batches(images[:chunk], det_batch)
    emb_tensor = to_tensor(images[:emb_batch], embedder.spec)
    # whole images as imgfeat embeds them: at their own aspect step, one call per size
    whole_sizes = [aspect_size(image.shape[0], image.shape[1], min(embedder.spec.size)) for image in images[:chunk]]
    whole_tensors = {size: to_tensor([images[i] for i, s in enumerate(whole_sizes) if s == size],
                                     replace(embedder.spec, size=size)) for size in set(whole_sizes)}
    names = ["keypoints", "wh"]
    for tensor in det_tensors:  # warm-up: every input shape compiled once, as a run does
        detector.model.run(tensor, names)
    for size in {emb_batch, len(paths) % emb_batch or emb_batch}:
        embedder.model.run(emb_tensor[:size])

    def whole_images(n: int) -> None:
        """The first n images' whole-image vectors, grouped by size in batches."""
        for size, tensor in whole_tensors.items():
            count = sum(1 for s in whole_sizes[:n] if s == size)
            for start in range(0, count, emb_batch):
                embedder.model.run(tensor[start:min(count, start + emb_batch)])

    whole_images(chunk)  # warm-up of those shapes

    def networks(first: int) -> None:  # one pipeline batch: what one stream does at a time
        n = min(chunk, len(paths) - first)
        for k, start in enumerate(range(0, n, det_batch)):
            detector.model.run(det_tensors[k][:min(det_batch, n - start)], names)
        for start in range(0, n, emb_batch):  # the main objects' crops
            embedder.model.run(emb_tensor[:min(emb_batch, n - start)])
        whole_images(n)

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(networks, range(0, len(paths), chunk)))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "seconds": seconds, "runtime": embedder.runtime,
            "batch_sizes": [det_batch, emb_batch], "streams": streams, "threads": threads or "all"}


def imgfeat_end_to_end(folder: Path, out: Path, **options) -> dict:
    """`imgfeat.extract` with default settings (plus `options`) into a fresh output."""
    import imgfeat

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = imgfeat.extract(folder, out, progress=False, **options)
    seconds = time.perf_counter() - start
    with open(out / "_manifest.json") as fh:
        manifest = json.load(fh)
    return {"images": report.processed, "ok": report.ok, "seconds": seconds,
            "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()},
            "runtime": manifest.get("model_digests", {}).get("runtime"),
            "workers": manifest["config"]["run"]["workers"]}


def _main_crop(image: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """The highest-scoring box above the threshold, or the whole image."""
    good = detections[detections[:, 4] >= SCORE_THRESHOLD]
    if not len(good):
        return image
    x1, y1, x2, y2 = good[np.argmax(good[:, 4]), :4]
    x1, y1 = max(int(x1), 0), max(int(y1), 0)
    x2, y2 = min(int(np.ceil(x2)), image.shape[1]), min(int(np.ceil(y2)), image.shape[0])
    return image[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else image


def naive_loop(paths: list[Path], out: Path, runtime: str) -> dict:
    """One image at a time: open, resize, detect, crop, embed (the Beam-tutorial shape)."""
    import pandas as pd

    detector, embedder = _baseline_models(runtime)
    whole = _whole_image_embedder(embedder)
    rows = []
    start = time.perf_counter()
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        detections = detector([image])[0]
        embedding, image_embedding = embedder([_main_crop(image, detections)])[0], whole([image])[0]
        rows.append({"path": str(path), "embedding": embedding.tolist(), "image_embedding": image_embedding.tolist()})
    pd.DataFrame(rows).to_parquet(out)
    return {"images": len(paths), "seconds": time.perf_counter() - start, "runtime": embedder.runtime}


def _baseline_models(runtime: str, threads: int = 0) -> tuple:
    """imgfeat's detector and embedder as a baseline uses them: with the same score floor for
    CenterNet's decoding that imgfeat's pipeline sets, so only the runner differs."""
    from imgfeat.models import create_detector, create_embedder

    detector = create_detector("centernet-mbv3", runtime=runtime, threads=threads)
    detector.min_score = SCORE_THRESHOLD
    return detector, create_embedder("mobilenet-v2", runtime=runtime, threads=threads)


def _whole_image_embedder(embedder):
    """Whole images embedded as imgfeat does by default: at their own aspect ratio."""
    from imgfeat.models.embedders import whole_image_embedder

    return whole_image_embedder(embedder) or embedder


class _Featurizer:
    """Ray actor / Spark worker body: models loaded once, then batch after batch, each model
    called at imgfeat's batch sizes for the CPU (the fastest measured), not at the engine's."""

    def __init__(self, runtime: str, threads: int = 0):
        from imgfeat.config import PipelineConfig

        self.detector, self.embedder = _baseline_models(runtime, threads)
        self.whole = _whole_image_embedder(self.embedder)
        config = PipelineConfig()
        self.det_batch, self.emb_batch = config.detect_batch_size, config.embed_batch_size

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        detections = [d for i in range(0, len(images), self.det_batch)
                      for d in self.detector(images[i:i + self.det_batch])]
        # the main objects' crops, then the whole images (imgfeat stores both vectors)
        crops = [_main_crop(image, dets) for image, dets in zip(images, detections)]
        objects = np.concatenate([self.embedder(crops[i:i + self.emb_batch])
                                  for i in range(0, len(crops), self.emb_batch)])
        wholes = np.concatenate([self.whole(images[i:i + self.emb_batch])
                                 for i in range(0, len(images), self.emb_batch)])
        return np.concatenate([objects, wholes], axis=1)


def _decode_bytes(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def ray_data(folder: Path, out: Path, runtime: str) -> dict:
    """Ray Data the documented way: read -> decode tasks -> one inference actor -> Parquet."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    startup = time.perf_counter() - started

    class Model:
        def __init__(self):
            self.featurizer = _Featurizer(runtime)

        def __call__(self, batch: dict) -> dict:
            embeddings = self.featurizer.features(list(batch["image"]))
            return {"path": batch["path"], "embedding": list(embeddings)}

    def decode(batch: dict) -> dict:
        return {"path": batch["path"], "image": [_decode_bytes(b) for b in batch["bytes"]]}

    start = time.perf_counter()
    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    ds = ds.map_batches(decode, batch_size=8, num_cpus=0.5)
    # one actor: an actor pool of 2 on 2 cores hangs (both wait for CPUs the tasks hold)
    ds = ds.map_batches(Model, batch_size=8, concurrency=1, num_cpus=1)
    ds.write_parquet(str(out))
    seconds = time.perf_counter() - start
    import pyarrow.dataset as ds_

    images = ds_.dataset(str(out), format="parquet").count_rows()
    ray.shutdown()
    return {"images": images, "seconds": seconds, "startup_seconds": startup}


_SPARK_MODEL = None


def spark_job(folder: Path, out: Path, runtime: str) -> dict:
    """PySpark local mode: binaryFile -> mapInPandas with the models loaded once per worker."""
    import pandas as pd
    from pyspark.sql import SparkSession

    cores = os.cpu_count() or 1
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need this venv's packages
    started = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("imgfeat-bench")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "8")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - started

    def featurize(frames):
        global _SPARK_MODEL
        if _SPARK_MODEL is None:  # once per Python worker; one thread each: `cores` tasks run at once
            _SPARK_MODEL = _Featurizer(runtime, threads=1)
        for frame in frames:
            images = [_decode_bytes(content) for content in frame["content"]]
            embeddings = _SPARK_MODEL.features(images)
            yield pd.DataFrame({"path": frame["path"], "embedding": [e.tolist() for e in embeddings]})

    start = time.perf_counter()
    df = spark.read.format("binaryFile").load(str(folder))
    df = df.repartition(cores * 4)
    df.mapInPandas(featurize, schema="path string, embedding array<float>").write.parquet(str(out))
    seconds = time.perf_counter() - start
    images = spark.read.parquet(str(out)).count()
    spark.stop()
    return {"images": images, "seconds": seconds, "startup_seconds": startup}


def rss_run(folder: Path, out: Path) -> dict:
    """Run imgfeat end to end in this (fresh) process and report its peak resident memory:
    the kernel's exact high-water mark, since imgfeat runs in one process (decode threads)."""
    result = imgfeat_end_to_end(folder, out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------- driver

def _in_subprocess(kind: str, folder: Path, out: Path, runtime: str, timeout: float) -> dict:
    """Run one row in a fresh interpreter (engines, RSS); its JSON comes back on the last line."""
    command = [sys.executable, __file__, "--_row", kind, "--_folder", str(folder), "--_out", str(out),
               "--baseline-runtime", runtime]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(lines[-1])


def _rate(row: dict) -> float | None:
    if not row or "error" in row or not row.get("seconds"):
        return None
    return row["images"] / row["seconds"]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="photos per row (default 300)")
    parser.add_argument("--rss-images", type=int, default=100,
                        help="photos of the 1x memory run; the 5x run has five times more (default 100)")
    parser.add_argument("--skip-engines", action="store_true", help="no Ray and Spark rows")
    parser.add_argument("--quick", action="store_true", help="60 photos, RSS at 30/150: a smoke run")
    parser.add_argument("--baseline-runtime", default="onnxruntime",
                        help="runtime of the naive/Ray/Spark baselines (default onnxruntime)")
    parser.add_argument("--output", default=str(RESULTS), help=f"JSON results (default {RESULTS})")
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    parser.add_argument("--_folder", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._row:  # a subprocess row
        folder, out = Path(args._folder), Path(args._out)
        rows = {"ray": lambda: ray_data(folder, out, args.baseline_runtime),
                "spark": lambda: spark_job(folder, out, args.baseline_runtime),
                "rss": lambda: rss_run(folder, out)}
        print(json.dumps(rows[args._row]()))
        return 0

    if args.quick:
        args.images, args.rss_images = 60, 30
    cores = os.cpu_count() or 1
    results: dict = {"machine": {"cpus": cores, "cpu": platform.processor() or platform.machine(),
                                 "python": platform.python_version(), "flags": cpu_flags(),
                                 "load_average_start": os.getloadavg()},
                     "command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "images": args.images, "rows": {}}
    rows = results["rows"]
    with tempfile.TemporaryDirectory(prefix="imgfeat-bench-") as tmp:
        tmp_path = Path(tmp)
        photos = make_photos(tmp_path / "photos", args.images)
        rss_1x = tmp_path / "rss1"
        rss_5x = tmp_path / "rss5"
        for i, path in enumerate(make_photos(tmp_path / "rss_all", 5 * args.rss_images, seed=1)):
            if i < args.rss_images:
                rss_1x.mkdir(exist_ok=True)
                shutil.copy(path, rss_1x / path.name)
            rss_5x.mkdir(exist_ok=True)
            shutil.move(path, rss_5x / path.name)

        def step(name: str, fn) -> None:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            try:
                rows[name] = fn()
            except Exception as exc:  # a failed row is reported, the others still run
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"    {rows[name]}", file=sys.stderr, flush=True)

        from imgfeat.config import PipelineConfig
        from imgfeat.models.runtimes import openvino_available, resolve_compute

        chosen, _ = resolve_compute("auto", "auto")  # what imgfeat.extract runs by default here
        other = {"onnxruntime": "openvino", "openvino": "onnxruntime"}[chosen]
        streams = PipelineConfig().inference_streams
        step("model-only-1-stream", lambda: model_only(photos, chosen, streams=1))
        step(f"model-only-{streams}-streams", lambda: model_only(photos, chosen, streams=streams))
        step("imgfeat", lambda: imgfeat_end_to_end(tmp_path / "photos", tmp_path / "out-imgfeat"))
        if other == "onnxruntime" or openvino_available():  # the runtime auto did not pick
            step(f"imgfeat-{other}", lambda: imgfeat_end_to_end(tmp_path / "photos", tmp_path / "out-other",
                                                                runtime=other))
            step(f"model-only-{other}", lambda: model_only(photos, other, streams=streams))
        step("naive", lambda: naive_loop(photos, tmp_path / "naive.parquet", args.baseline_runtime))
        for engine, module in (("ray", "ray"), ("spark", "pyspark")):
            if args.skip_engines:
                rows[engine] = {"skipped": "--skip-engines"}
            elif not _installed(module):
                rows[engine] = {"skipped": f"{module} not installed (pip install 'imgfeat[{engine}]')"}
            else:
                step(engine, lambda e=engine: _in_subprocess(e, tmp_path / "photos", tmp_path / f"out-{e}",
                                                             args.baseline_runtime, timeout=900))
        step("rss-1x", lambda: _in_subprocess("rss", rss_1x, tmp_path / "out-rss1", "", timeout=900))
        step("rss-5x", lambda: _in_subprocess("rss", rss_5x, tmp_path / "out-rss5", "", timeout=1800))
    results["machine"]["load_average_end"] = os.getloadavg()
    results["ratios"] = ratios(rows)
    print(f"cpu flags: {' '.join(results['machine']['flags'])}")
    print(table(results))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(f"\nwritten: {args.output}")
    return 0


def ratios(rows: dict) -> dict:
    """The issue's targets as ratios of images/s (and of peak memory)."""
    e2e = _rate(rows.get("imgfeat", {}))
    # the ceiling: the faster of the networks in one stream and in imgfeat's streams
    model = max((_rate(row) or 0 for name, row in rows.items()
                 if name.startswith("model-only-") and name.endswith(("stream", "streams"))), default=0)
    out = {"end_to_end/model_only": round(e2e / model, 3) if e2e and model else None}
    for name, other in (("end_to_end/naive", "naive"), ("end_to_end/ray", "ray"), ("end_to_end/spark", "spark")):
        rate = _rate(rows.get(other, {}))
        out[name] = round(e2e / rate, 3) if e2e and rate else None
    other = next((name[len("imgfeat-"):] for name in rows if name.startswith("imgfeat-")), None)
    other_e2e, other_model = _rate(rows.get(f"imgfeat-{other}", {})), _rate(rows.get(f"model-only-{other}", {}))
    row = rows.get("imgfeat", {})
    load = row.get("stage_seconds", {}).get("load") if e2e else None
    if load is not None and model:
        out["end_to_end_without_model_load/model_only"] = round(
            row["images"] / (row["seconds"] - load) / model, 3)
    if other:
        out[f"end_to_end_{other}/model_only_{other}"] = round(other_e2e / other_model, 3) if other_e2e and other_model else None
    one, five = rows.get("rss-1x", {}), rows.get("rss-5x", {})
    if "peak_rss_mb" in one and "peak_rss_mb" in five:
        out["rss_5x/1x"] = round(five["peak_rss_mb"] / one["peak_rss_mb"], 3)
    return out


def table(results: dict) -> str:
    """The rows and ratios as a Markdown table (what docs/benchmarks.md shows)."""
    lines = ["| row | images | seconds | images/s | notes |", "|---|---:|---:|---:|---|"]
    for name, row in results["rows"].items():
        if "error" in row or "skipped" in row:
            lines.append(f"| {name} | | | | {row.get('error') or row.get('skipped')} |")
            continue
        notes = []
        if row.get("runtime"):
            notes.append(row["runtime"])
        if "startup_seconds" in row:
            notes.append(f"start-up {row['startup_seconds']:.1f} s not timed")
        if "peak_rss_mb" in row:
            notes.append(f"peak RSS {row['peak_rss_mb']:.0f} MB")
        if "stage_seconds" in row:
            notes.append("stages " + ", ".join(f"{k} {v}" for k, v in row["stage_seconds"].items()))
        rate = _rate(row)
        lines.append(f"| {name} | {row['images']} | {row['seconds']:.1f} | {rate:.2f} | {'; '.join(notes)} |")
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    targets = {"end_to_end/model_only": ">= 0.85", "end_to_end/naive": ">= 5", "end_to_end/ray": ">= 1.3",
               "end_to_end/spark": ">= 1.3", "rss_5x/1x": "<= 1.15"}
    for name, value in results["ratios"].items():
        lines.append(f"| {name} | {value if value is not None else 'n/a'} | {targets.get(name, '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
