"""Inference runtimes: one ONNX file, run by onnxruntime or by OpenVINO.

    create_runtime(path, runtime="auto", device="cpu", threads=0, precision="auto")
    resolve_compute("auto", "auto", "cpu") -> ("openvino", "bf16") on CPUs with native bf16
                                             (and OpenVINO installed), else ("onnxruntime", "fp32")
    create_runtime(path, precision="int8", calibration=fn)  # quantised once, models/quantize.py

Both wrappers have the same small interface: `input_name`, `input_shape`, `output_names`,
`fixed_batch`, `digest`, `precision`, `describe()` and `run(batch, output_names)`.
`device="cuda"` always means onnxruntime's CUDA provider (`pip install 'imgfeat[gpu]'`).
OpenVINO reads the ONNX file directly and compiles it once per input shape it is given
(in bf16, 1.2-1.6x faster than one dynamic-shape compile, docs/benchmarks.md),
with its model cache under $IMGFEAT_HOME so the next process does not recompile.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, MissingExtra
from ..storage import file_digest, imgfeat_home

RUNTIME_CHOICES = ("auto", "onnxruntime", "openvino")
INT8_AUTO_RUNTIME = "onnxruntime"  # what --precision int8 runs on with --runtime auto
PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
# imgfeat's names -> OpenVINO's inference precision; int8 files carry their own int8 layers
# (QDQ), and what is left in float between them stays f32 (bf16 there would add its own error)
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_available() -> bool:
    """True when `import openvino` works (the `imgfeat[openvino]` extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo's names for native bf16


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=1)
def openvino_has_bf16() -> bool:
    """True when OpenVINO is installed and this CPU computes in bf16 natively (AVX-512 BF16
    or AMX): there OpenVINO's default precision is bf16 and it runs CNNs ~2x faster than
    onnxruntime fp32. On AVX2-only CPUs both run fp32 and onnxruntime was as fast or faster.

    A CPU whose flags show no native bf16 answers False without importing OpenVINO: resolving
    `--runtime auto` then loads nothing (importing openvino starts its native thread pools) for
    a run that will use onnxruntime. Elsewhere OpenVINO itself is asked."""
    flags = cpu_flags()
    if flags is not None and not flags & BF16_CPU_FLAGS:
        return False
    if not openvino_available():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_runtime(runtime: str, device: str = "cpu") -> str:
    """The concrete runtime for a `--runtime` choice on a device.

    "auto" is the fastest one measured for the CPU: OpenVINO where the CPU has native bf16
    (about 2x onnxruntime on CNNs there), otherwise onnxruntime (on an AVX2 CPU, against
    OpenVINO fp32: detector 1.04x and embedder 1.10x at their best settings,
    benchmarks/batch_sizes.py, and 1.16x end to end, docs/benchmarks.md); on "cuda" it is
    always onnxruntime (CUDA execution provider).

    Raises:
        ConfigError: an unknown runtime, or openvino asked for with device "cuda".
        MissingExtra: openvino asked for explicitly but not installed.
    """
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIME_CHOICES)}")
    if device == "cuda":
        if runtime == "openvino":
            raise ConfigError("--device cuda runs on onnxruntime's CUDA provider; use --runtime "
                              "onnxruntime (or auto) with it, or --device cpu for OpenVINO")
        return "onnxruntime"
    if runtime == "auto":
        return "openvino" if openvino_has_bf16() else "onnxruntime"
    if runtime == "openvino" and not openvino_available():
        raise MissingExtra("openvino", extra="openvino", purpose="--runtime openvino")
    return runtime


def resolve_compute(runtime: str = "auto", precision: str = "auto", device: str = "cpu") -> tuple[str, str]:
    """The concrete (runtime, precision) for a `--runtime` and `--precision` choice here.

    Resolved once, where a run is planned, and recorded with the output: a resumed run, an
    engine task on another kind of CPU and the queries of `search`/`serve` then compute the
    same way (bf16 moves embeddings to cosine 0.991-0.9996 of fp32 and flips near-tied
    detections, so mixing the two in one output is refused). "auto" is the fastest measured
    choice: OpenVINO bf16 where the CPU has native bf16; elsewhere onnxruntime fp32 (on AVX2
    as fast as OpenVINO fp32); onnxruntime's CUDA provider (fp32) on "cuda". "fp32" with
    runtime "auto" is onnxruntime everywhere: at one thread per stream (the local runner's
    setting on 2 cores) OpenVINO fp32 ran 0.9-1.3x onnxruntime on the detector and 0.4-0.75x
    on the embedder, even on a bf16 CPU (benchmarks/precision.py, docs/benchmarks.md).

    "int8" (never picked by "auto") runs the models quantised by `models.quantize` on either
    runtime (onnxruntime with runtime "auto"); the CPU only.

    Raises:
        ConfigError: an unknown choice, or one this machine cannot compute (bf16 without a
            CPU that has it natively, bf16 on onnxruntime or CUDA, openvino on "cuda", int8
            on "cuda").
        MissingExtra: openvino asked for explicitly but not installed.
    """
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
    if precision == "int8":
        if device != "cpu":
            raise ConfigError("int8 runs on the CPU (onnxruntime or OpenVINO): use --precision fp32 (or "
                              "auto) with --device cuda, or --device cpu for int8")
        return resolve_runtime(INT8_AUTO_RUNTIME if runtime == "auto" else runtime, device), "int8"
    if precision == "bf16" and device == "cpu" and runtime != "onnxruntime" and not openvino_has_bf16():
        raise ConfigError("this CPU has no native bf16 (AVX-512 BF16 or AMX), or OpenVINO is not "
                          "installed (pip install 'imgfeat[openvino]'), so nothing computes bf16 here: "
                          "use --precision fp32, or run on such a CPU")
    if runtime == "auto" and device == "cpu" and precision == "bf16":
        runtime = "openvino"
    concrete = resolve_runtime(runtime, device)
    if concrete == "onnxruntime":
        if precision == "bf16":
            raise ConfigError("bf16 runs on OpenVINO with a CPU that has native bf16 (AVX-512 BF16 or "
                              "AMX); onnxruntime computes these models in fp32: use --precision fp32 "
                              "(or auto), or --runtime openvino on such a CPU")
        return concrete, "fp32"
    if precision == "auto":
        return concrete, "bf16" if openvino_has_bf16() else "fp32"
    return concrete, precision


class OnnxModel:
    """An onnxruntime session with the options imgfeat wants.

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda" (needs onnxruntime-gpu: `pip install 'imgfeat[gpu]'`).
        threads: intra-op threads; 0 lets onnxruntime use every core.
        precision: "fp32" (or "auto"): onnxruntime runs the file's own float32 weights;
            "int8": the file is an int8 (QDQ) one made by `models.quantize`, said so in
            `describe()`.

    Raises:
        ConfigError: another precision, or an unknown device.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0,
                 precision: str = "fp32"):
        if precision not in ("auto", "fp32", "int8"):
            raise ConfigError(f"onnxruntime runs these models in fp32 or int8, not {precision!r}: use "
                              "--runtime openvino for bf16")
        self.precision = "int8" if precision == "int8" else "fp32"
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise MissingExtra("onnxruntime", purpose="running ONNX models") from exc
        self.path = Path(path)
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no spin-waiting between operators: in the pipeline the decode workers and the other
        # inference stream need those cycles (spinning cut end-to-end throughput by a third
        # on 2 cores; the networks alone run as fast without it)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingExtra("onnxruntime-gpu", extra="gpu",
                                   purpose="--device cuda (this onnxruntime has no CUDA provider)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        self.digest = file_digest(self.path)
        self._version = ort.__version__

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> list:
        return list(self.inputs[0].shape)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def output_shape(self) -> list:
        """Shape of the first output; dynamic axes are strings or None."""
        return list(self.outputs[0].shape)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph insists on, or None when the batch axis is dynamic."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def describe(self) -> str:
        """What ran the model, for the manifest: e.g. "onnxruntime 1.22.0 CPUExecutionProvider"
        (with " int8" after it for a quantised file)."""
        described = f"onnxruntime {self._version} {self.session.get_providers()[0]}"
        return described + " int8" if self.precision == "int8" else described

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run one batch; splits it when the graph has a fixed batch size."""
        fixed = self.fixed_batch
        if fixed is None or batch.shape[0] == fixed:
            return self.session.run(output_names, {self.input_name: batch})
        parts = [self.session.run(output_names, {self.input_name: batch[i:i + fixed]})
                 for i in range(0, batch.shape[0], fixed)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


class OpenVinoModel:
    """An ONNX file compiled by OpenVINO for the CPU, once per input shape it is called with.

    Each batch runs on a model compiled for exactly its shape: batch sizes are padded up to a
    power of two (a short last batch reuses the full batch's compile, or a smaller one), and
    every shape's compiled model is kept. In bf16, static shapes ran 1.2-1.6x faster than one
    compile with a dynamic batch (benchmarks/precision.py, docs/benchmarks.md). Compiles are cached on disk under
    `$IMGFEAT_HOME/openvino-cache`, so later processes load instead of compiling.

    Args:
        path: the .onnx file (read directly, no conversion step).
        device: "cpu" only (the GPU path is onnxruntime's CUDA provider).
        threads: inference threads per call; 0 lets one call use every core. With a
            number, the model gets as many OpenVINO streams as the cores hold, so calls from
            several threads (the local runner's inference streams) run side by side.
        hint: "LATENCY" (one stream using every thread: best for one call at a time) or
            "THROUGHPUT" (several streams, for many concurrent requests).
        streams: number of OpenVINO streams; 0 lets `threads` and the hint decide.
        precision: "fp32" or "bf16" ("auto": bf16 where the CPU has it natively, else fp32);
            "int8": the file is an int8 (QDQ) one made by `models.quantize`, whose float
            remainder runs in f32.
        static: compile per shape (True) or once with a dynamic batch axis (False; kept for
            the benchmarks' comparison).

    Raises:
        MissingExtra: openvino is not installed (`pip install 'imgfeat[openvino]'`).
        ConfigError: a device other than "cpu", an unknown hint, or a precision this CPU
            cannot compute natively (bf16 without AVX-512 BF16/AMX).
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0,
                 hint: str = "LATENCY", streams: int = 0, precision: str = "auto", static: bool = True):
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingExtra("openvino", extra="openvino", purpose="--runtime openvino") from exc
        if device != "cpu":
            raise ConfigError(f"the OpenVINO runtime runs on 'cpu' here, got device {device!r}; "
                              "use --runtime onnxruntime with --device cuda")
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise ConfigError(f"OpenVINO hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        self.path = Path(path)
        self.device = device
        self.precision = resolve_compute("openvino", precision, device)[1]
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        self._ov = ov
        properties: dict[str, object] = {"PERFORMANCE_HINT": hint,
                                         "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[self.precision]}
        if threads:
            streams = streams or max(1, (os.cpu_count() or 1) // threads)
            properties["INFERENCE_NUM_THREADS"] = int(threads) * streams
        if streams:
            properties["NUM_STREAMS"] = int(streams)
        cache = _writable_dir(imgfeat_home() / "openvino-cache")
        if cache is not None:
            properties["CACHE_DIR"] = str(cache)
        self._properties = properties
        self.static = static
        self._compiled: dict[tuple[int, ...], object] = {}
        self._lock = threading.Lock()
        self._requests = threading.local()  # an infer request serves one call at a time
        self._input_names = [p.get_any_name() for p in self._model.inputs]
        self._output_names = [p.get_any_name() for p in self._model.outputs]
        self._input_shape = _static_dims(self._model.inputs[0].get_partial_shape())
        self._output_shape = _static_dims(self._model.outputs[0].get_partial_shape())
        self._input_shape[0] = self._output_shape[0] = None  # any batch size
        if not static:
            self._dynamic = self._compile(None)
        self.digest = file_digest(self.path)
        self._version = ov.get_version().split("-")[0]

    @property
    def input_name(self) -> str:
        return self._input_names[0]

    @property
    def input_shape(self) -> list:
        return list(self._input_shape)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @property
    def output_shape(self) -> list:
        """Shape of the first output; dynamic axes are None."""
        return list(self._output_shape)

    @property
    def fixed_batch(self) -> int | None:
        return None  # any batch size is taken (padded to a compiled one)

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes compiled so far (static mode)."""
        return sorted(self._compiled)

    def describe(self) -> str:
        """What ran the model, for the manifest: e.g. "openvino 2026.4.1 CPU bf16"."""
        return f"openvino {self._version} CPU {self.precision}"

    def _compile(self, shape: tuple[int, ...] | None):
        """Compile for one input shape (None: a dynamic batch axis), checking the precision."""
        model = self._model.clone()
        name = self.input_name
        if shape is None:
            partial = model.inputs[0].get_partial_shape()
            partial[0] = self._ov.Dimension()
            model.reshape({name: partial})
        else:
            model.reshape({name: self._ov.PartialShape(list(shape))})
        compiled = self._core.compile_model(model, "CPU", self._properties)
        got = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if got != _OPENVINO_PRECISION[self.precision]:
            raise ConfigError(f"OpenVINO compiled {self.path.name} in {got}, not {self.precision}: this "
                              "CPU cannot compute that precision natively; use --precision fp32")
        return compiled

    def _compiled_for(self, shape: tuple[int, ...]):
        compiled = self._compiled.get(shape)
        if compiled is None:
            with self._lock:  # two threads asking for one new shape compile it once
                compiled = self._compiled.get(shape)
                if compiled is None:
                    compiled = self._compiled[shape] = self._compile(shape)
        return compiled

    def _request(self, key: object, compiled) -> object:
        requests = getattr(self._requests, "by_shape", None)
        if requests is None:
            requests = self._requests.by_shape = {}
        request = requests.get(key)
        if request is None:
            request = requests[key] = compiled.create_infer_request()
        return request

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run one batch (any size); outputs are copies, safe to keep across calls. Safe to
        call from several threads: each thread has its own infer request per shape."""
        names = output_names or self.output_names
        count = batch.shape[0]
        if self.static:
            padded = padded_batch_size(count)
            if padded > count:
                batch = np.concatenate([batch, np.zeros((padded - count, *batch.shape[1:]), batch.dtype)])
            shape = tuple(batch.shape)
            compiled = self._compiled_for(shape)
        else:
            shape, compiled = None, self._dynamic
        request = self._request(shape, compiled)
        results = request.infer({self.input_name: np.ascontiguousarray(batch)})
        ports = {p.get_any_name(): p for p in compiled.outputs}
        return [np.array(results[ports[name]][:count], copy=True) for name in names]


def padded_batch_size(count: int) -> int:
    """The batch size a batch of `count` runs at with static shapes: the next power of two, so
    a model compiles at most log2(batch size) + 1 batch sizes and a short last batch wastes
    less than half of one batch."""
    return 1 << max(0, int(count) - 1).bit_length()


def _static_dims(shape) -> list:
    return [d.get_length() if d.is_static else None for d in shape]


def _writable_dir(path: Path) -> Path | None:
    """`path`, created if needed; None when it cannot be (the cache is then skipped)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


RUNTIMES: dict[str, Callable[..., OnnxModel | OpenVinoModel]] = {
    "onnxruntime": OnnxModel,
    "openvino": OpenVinoModel,
}


def create_runtime(path: str | os.PathLike, runtime: str = "auto", device: str = "cpu",
                   threads: int = 0, precision: str = "auto",
                   calibration: Callable[[], list[np.ndarray]] | None = None) -> OnnxModel | OpenVinoModel:
    """Load an ONNX file with the chosen runtime ("auto", "onnxruntime", "openvino") and
    precision ("auto", "fp32", "bf16", "int8"); a run passes the concrete pair it recorded.

    Args:
        calibration: for "int8", a function giving the model's input tensors made from the
            calibration photos (`models.quantize.calibration_photos`) by the model's own
            preprocessing; the file is quantised on them once and cached.

    Raises:
        ConfigError, MissingExtra: see `resolve_compute`; int8 for a model without calibration.
    """
    concrete, precision = resolve_compute(runtime, precision, device)
    if precision == "int8":
        if calibration is None:
            raise ConfigError(f"{Path(path).name} has no calibration inputs, so it cannot be quantised "
                              "to int8; int8 is offered for the bundled detector and ONNX embedders: "
                              "use --precision fp32 (or auto)")
        from .quantize import quantized_model

        path = quantized_model(path, calibration())
    return RUNTIMES[concrete](path, device=device, threads=threads, precision=precision)
