"""Runtimes, precisions, shape policies and decode threads, side by side in one run.

    python benchmarks/precision.py            # 3 interleaved rounds, ~2-3 min on 2 cores
    python benchmarks/precision.py --rounds 5

Model-only rows (tensors already in memory; the networks alone, `--threads` each):

    detector  CenterNet-MobileNetV3 at batch 1 (imgfeat's CPU default) on the 14 sample
              photos, letterboxed into a 512 x 512 square ("sq") or aspect-kept with the long
              side 512 and the short one padded to a multiple of 128 ("aspect");
              onnxruntime fp32 ("ort": today's baseline is ort-sq), onnxruntime with the
              symbolic dims fixed per shape ("ort-static"), OpenVINO with a dynamic batch
              axis compiled once ("ov-dyn", as imgfeat compiled before) or compiled per shape
              ("ov-static", imgfeat now), each in fp32 and, where the CPU has it, bf16;
              and the int8 file (`--precision int8`, models/quantize.py) on onnxruntime
              ("ort-int8") and OpenVINO ("ov-static-int8")
    embedder  MobileNetV2 at batch 16 on random crops, the same runtimes

Accuracy rows (`--accuracy`, on by default): each (runtime, precision) against onnxruntime
fp32 on the sample photos, as tests/test_precision.py gates them: embedding cosine (min,
mean), code bits that differ (max of 256), and photos whose main object's label changed.

Decode rows: `imgfeat.decode.decode_image` of 1-4 Mpx JPEGs (default DecodeConfig) with 1
and 2 threads, beside the embedder's rate (the `--no-detect` path's two halves); then
`imgfeat.extract --no-detect` on 48 of them with 1 and 2 decode workers (model load excluded).

Variants run interleaved, round after round, and the table gives medians and the ratio to
the baseline of the same round (the CPU is shared: absolute rates drift, ratios less).
Results: a table on stdout and benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgfeat.config import DecodeConfig  # noqa: E402
from imgfeat.decode import decode_image  # noqa: E402
from imgfeat.models import centernet  # noqa: E402
from imgfeat.models.embedders import _calibration_batches, prepare_mobilenet_v2  # noqa: E402
from imgfeat.models.detectors import _letterboxed_photos  # noqa: E402
from imgfeat.models.preprocess import InputSpec, letterbox  # noqa: E402
from imgfeat.models.quantize import quantized_model  # noqa: E402
from imgfeat.models.runtimes import OnnxModel, OpenVinoModel, openvino_available, openvino_has_bf16  # noqa: E402

SAMPLES = ROOT / "samples"
RESULTS = ROOT / "benchmarks" / "results" / "precision.json"
DETECTOR = Path(centernet.__file__).parent / "weights" / centernet.WEIGHTS_FILE


def cpu_flags() -> list[str]:
    """The CPU flags that decide the fast paths: avx2, avx512f, avx512_bf16, amx, vnni."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return [f for f in wanted if f in flags]


def _photos() -> list[np.ndarray]:
    images = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix.lower() in (".jpg", ".png"):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
    return images


def _detector_inputs(images: list[np.ndarray], keep_aspect: bool) -> list[np.ndarray]:
    batches = []
    for image in images:
        h, w = centernet.input_shape_for(*image.shape[:2], keep_aspect=keep_aspect)
        batch = np.zeros((1, h, w, 3), np.float32)
        letterbox(image, 512, "linear", out=batch[0])
        batches.append(batch)
    return batches


class _OrtStatic:
    """onnxruntime with the symbolic dims fixed (free dimension overrides), one session per
    shape: does onnxruntime gain from static shapes as OpenVINO does?"""

    def __init__(self, path: Path, dims: tuple[str, ...], threads: int):
        import onnxruntime as ort

        self.path, self.dims, self.sessions, self.ort, self.threads = path, dims, {}, ort, threads

    def run(self, batch: np.ndarray, names=None):
        shape = batch.shape
        session = self.sessions.get(shape)
        if session is None:
            options = self.ort.SessionOptions()
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            for axis, name in enumerate(self.dims):
                if name:
                    options.add_free_dimension_override_by_name(name, int(shape[axis]))
            session = self.sessions[shape] = self.ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        return session.run(names, {session.get_inputs()[0].name: batch})


def _variants(path: Path, dims: tuple[str, ...], threads: int, int8: Path | None = None) -> dict:
    variants = {"ort": lambda: OnnxModel(path, threads=threads),
                "ort-static": lambda: _OrtStatic(path, dims, threads)}
    if int8 is not None:
        variants["ort-int8"] = lambda: OnnxModel(int8, threads=threads, precision="int8")
        if openvino_available():
            variants["ov-static-int8"] = lambda: OpenVinoModel(int8, threads=threads, precision="int8")
    if openvino_available():
        precisions = ["fp32"] + (["bf16"] if openvino_has_bf16() else [])
        for precision in precisions:
            variants[f"ov-dyn-{precision}"] = (
                lambda p=precision: OpenVinoModel(path, threads=threads, precision=p, static=False))
            variants[f"ov-static-{precision}"] = (
                lambda p=precision: OpenVinoModel(path, threads=threads, precision=p))
    return variants


def bench_models(rounds: int, threads: int) -> dict:
    """img/s per variant and round; within a round the variants take turns batch by batch,
    so a burst of load from the machine's other users hits them all alike."""
    images = _photos()
    det_inputs = {"sq": _detector_inputs(images, False), "aspect": _detector_inputs(images, True)}
    det_names = list(centernet.OUTPUT_NAMES)
    rng = np.random.default_rng(0)
    emb_batches = [rng.uniform(-2, 2, (16, 3, 224, 224)).astype(np.float32) for _ in range(4)]
    emb_batches.append(emb_batches[0][:5])  # a short last batch, as a run ends with
    rows: dict[str, list[float]] = {}
    kinds = {"detector": [], "embedder": []}
    # the int8 files imgfeat makes for `--precision int8` (cached after the first run)
    det_int8 = quantized_model(DETECTOR, _letterboxed_photos(512, True))
    emb_path = prepare_mobilenet_v2()
    emb_int8 = quantized_model(emb_path, _calibration_batches(emb_path, InputSpec(size=(224, 224))))
    for name, make in _variants(DETECTOR, ("batch", "height", "width"), threads, det_int8).items():
        model = make()
        for policy, batches in det_inputs.items():
            kinds["detector"].append((f"detector {name}-{policy}", model, batches, det_names))
    for name, make in _variants(emb_path, ("batch",), threads, emb_int8).items():
        kinds["embedder"].append((f"embedder {name}", make(), emb_batches, None))
    for jobs in kinds.values():
        for _, model, batches, names in jobs:  # warm-up: compiles and first calls, untimed
            for batch in batches:
                model.run(batch, names)
    for _ in range(rounds):
        for jobs in kinds.values():
            seconds = [0.0] * len(jobs)
            for i in range(len(jobs[0][2])):
                for j, (_, model, batches, names) in enumerate(jobs):
                    start = time.perf_counter()
                    model.run(batches[i], names)
                    seconds[j] += time.perf_counter() - start
            for (label, _, batches, _), spent in zip(jobs, seconds):
                rows.setdefault(label, []).append(sum(len(b) for b in batches) / spent)
    return rows


def bench_accuracy() -> dict:
    """Each available (runtime, precision) against onnxruntime fp32 on the sample photos."""
    from imgfeat.models import create_detector, create_embedder, create_hasher

    images = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix.lower() in (".jpg", ".png"):
            with Image.open(path) as image:
                image.thumbnail((1024, 1024))
                images.append(np.asarray(image.convert("RGB")))

    def run(runtime: str, precision: str):
        detector = create_detector("centernet-mbv3", runtime=runtime, precision=precision)
        embedder = create_embedder("mobilenet-v2", runtime=runtime, precision=precision)
        detections = [d for i in range(0, len(images), 8) for d in detector(images[i:i + 8])]
        embeddings = embedder(images)
        return detections, embeddings, create_hasher("rproj", embedder.dim, 256)(embeddings)

    cases = [("onnxruntime", "int8")]
    if openvino_available():
        native = [("openvino", "bf16")] if openvino_has_bf16() else []
        cases = [("openvino", "fp32"), *native, *cases, ("openvino", "int8")]
    ref_dets, ref_emb, ref_codes = run("onnxruntime", "fp32")
    rows = {}
    for runtime, precision in cases:
        dets, emb, codes = run(runtime, precision)
        cosines = np.sum(ref_emb * emb, axis=1)
        bits = np.unpackbits(ref_codes ^ codes, axis=1).sum(axis=1)
        compared = [(r, g) for r, g in zip(ref_dets, dets) if len(r) and r[0, 4] >= 0.3]
        # where the main label changed: how far below the reference's top score the reference
        # scored the label now on top (None: the reference did not have that label at all)
        changed = [_score_gap(r, g) for r, g in compared if not len(g) or g[0, 5] != r[0, 5]]
        rows[f"{runtime} {precision}"] = {
            "cosine_min": round(float(cosines.min()), 4), "cosine_mean": round(float(cosines.mean()), 4),
            "bits_max": int(bits.max()), "bits_mean": round(float(bits.mean()), 1), "photos": len(compared),
            "main_label_changed": len(changed), "reference_gap_where_changed": changed}
    return rows


def _score_gap(reference: np.ndarray, got: np.ndarray) -> float | None:
    """The reference's top score minus its best score for the label `got` puts first."""
    if not len(got):
        return None
    same = reference[reference[:, 5] == got[0, 5]]
    return round(float(reference[0, 4] - same[0, 4]), 3) if len(same) else None


def _large_jpegs(count: int = 12) -> list[bytes]:
    """1-4 Mpx JPEGs (q90) made from the samples, like wallpapers and camera photos."""
    sizes = ((1920, 1080), (2048, 1536), (1600, 1200), (2560, 1440))
    out = []
    images = [Image.fromarray(im) for im in _photos()]
    for i in range(count):
        buf = io.BytesIO()
        images[i % len(images)].resize(sizes[i % len(sizes)]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_decode(rounds: int) -> dict:
    jpegs = _large_jpegs()
    config = DecodeConfig()
    rows: dict[str, list[float]] = {}
    for _ in range(rounds):
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                start = time.perf_counter()
                list(pool.map(lambda b: decode_image(b, config), jpegs))
                rows.setdefault(f"decode {threads} thread{'s' * (threads > 1)}", []).append(
                    len(jpegs) / (time.perf_counter() - start))
    return rows


def bench_no_detect_workers(rounds: int) -> dict:
    """`imgfeat.extract --no-detect` on 48 large JPEGs with 1 and 2 decode workers, taking
    turns; img/s without the model load."""
    import shutil
    import tempfile

    import imgfeat

    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="imgfeat-precision-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, content in enumerate(_large_jpegs(48)):
            (folder / f"{i:03d}.jpg").write_bytes(content)
        for _ in range(rounds):
            for workers in (1, 2):
                out = Path(tmp) / f"out-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                report = imgfeat.extract(folder, out, detector="none", workers=workers, progress=False)
                seconds = time.perf_counter() - start - report.stage_seconds.get("load", 0.0)
                rows.setdefault(f"no-detect e2e {workers} worker{'s' * (workers > 1)}", []).append(
                    report.processed / seconds)
    return rows


def summarise(rows: dict[str, list[float]]) -> dict:
    out = {}
    base = {"detector": rows.get("detector ort-sq"), "embedder": rows.get("embedder ort"),
            "decode": rows.get("decode 1 thread"), "no-detect": rows.get("no-detect e2e 1 worker")}
    for label, rates in rows.items():
        reference = base[label.split()[0]]
        ratio = statistics.median(r / b for r, b in zip(rates, reference)) if reference else None
        out[label] = {"img_s": round(statistics.median(rates), 1), "ratio": round(ratio, 2) if ratio else None,
                      "rounds": [round(r, 1) for r in rates]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-e2e", action="store_true", help="no `extract --no-detect` rows")
    parser.add_argument("--skip-decode", action="store_true", help="no decode rows")
    parser.add_argument("--skip-accuracy", action="store_true", help="no accuracy rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="inference threads per model (default 1: what each of the local runner's "
                             "streams gets on 2 cores)")
    args = parser.parse_args(argv)
    machine = {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "flags": cpu_flags(),
               "openvino_bf16": openvino_has_bf16()}
    rows = bench_models(args.rounds, args.threads)
    if not args.skip_decode:
        rows.update(bench_decode(args.rounds))
    if not args.skip_e2e:
        rows.update(bench_no_detect_workers(args.rounds))
    accuracy = {} if args.skip_accuracy else bench_accuracy()
    result = {"machine": machine, "rounds": args.rounds, "threads": args.threads, "rows": summarise(rows),
              "accuracy": accuracy,
              "command": "python benchmarks/precision.py " + " ".join(argv or sys.argv[1:])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"cpu: {machine['cpu']}, {machine['cpus']} cores, flags {' '.join(machine['flags'])}")
    print(f"{'variant':34} {'img/s':>8} {'x baseline':>10}   (baseline: ort-sq, ort, 1 thread)")
    for label, row in result["rows"].items():
        print(f"{label:34} {row['img_s']:8.1f} {row['ratio'] if row['ratio'] is not None else '':>10}")
    if accuracy:
        print(f"\n{'vs onnxruntime fp32':22} {'cos min':>8} {'cos mean':>8} {'bits max':>8} {'main label changed':>20}")
        for label, row in accuracy.items():
            print(f"{label:22} {row['cosine_min']:8.4f} {row['cosine_mean']:8.4f} {row['bits_max']:8d} "
                  f"{row['main_label_changed']:>6} of {row['photos']} (reference gaps {row['reference_gap_where_changed']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
