"""Inference runtimes: one ONNX file, run by onnxruntime or by OpenVINO.

    create_runtime(path, runtime="auto", device="cpu", threads=0) -> OnnxModel | OpenVinoModel
    resolve_runtime("auto", "cpu") -> "openvino" on CPUs with native bf16, else "onnxruntime"

Both wrappers have the same small interface: `input_name`, `input_shape`, `output_names`,
`fixed_batch`, `digest`, `describe()` and `run(batch, output_names) -> list[np.ndarray]`.
`device="cuda"` always means onnxruntime's CUDA provider (`pip install 'imgfeat[gpu]'`).
OpenVINO reads the ONNX file directly; nothing is converted on disk.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, MissingExtra

RUNTIME_CHOICES = ("auto", "onnxruntime", "openvino")


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file, first `length` hex digits: the model fingerprint in the manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def openvino_available() -> bool:
    """True when `import openvino` works (the `imgfeat[openvino]` extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def openvino_has_bf16() -> bool:
    """True when OpenVINO is installed and this CPU computes in bf16 natively (AVX-512 BF16
    or AMX): there OpenVINO's default precision is bf16 and it runs CNNs ~2x faster than
    onnxruntime fp32. On AVX2-only CPUs both run fp32 and onnxruntime was as fast or faster."""
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


class OnnxModel:
    """An onnxruntime session with the options imgfeat wants.

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda" (needs onnxruntime-gpu: `pip install 'imgfeat[gpu]'`).
        threads: intra-op threads; 0 lets onnxruntime use every core.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0):
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
        """What ran the model, for the manifest: e.g. "onnxruntime 1.22.0 CPUExecutionProvider"."""
        return f"onnxruntime {self._version} {self.session.get_providers()[0]}"

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run one batch; splits it when the graph has a fixed batch size."""
        fixed = self.fixed_batch
        if fixed is None or batch.shape[0] == fixed:
            return self.session.run(output_names, {self.input_name: batch})
        parts = [self.session.run(output_names, {self.input_name: batch[i:i + fixed]})
                 for i in range(0, batch.shape[0], fixed)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


class OpenVinoModel:
    """An ONNX file compiled by OpenVINO for the CPU, with a dynamic batch axis.

    Args:
        path: the .onnx file (read directly, no conversion step).
        device: "cpu" only (the GPU path is onnxruntime's CUDA provider).
        threads: inference threads per call; 0 lets one call use every core. With a
            number, the model gets as many OpenVINO streams as the cores hold, so calls from
            several threads (the local runner's inference streams) run side by side.
        hint: "LATENCY" (one stream using every thread: best for one call at a time) or
            "THROUGHPUT" (several streams, for many concurrent requests).
        streams: number of OpenVINO streams; 0 lets `threads` and the hint decide.
        precision: inference precision hint ("f32", "bf16", "f16"); None keeps OpenVINO's
            default for the CPU (bf16 where the CPU has AVX-512-BF16/AMX, f32 otherwise).

    Raises:
        MissingExtra: openvino is not installed (`pip install 'imgfeat[openvino]'`).
        ConfigError: a device other than "cpu", or an unknown hint.
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0,
                 hint: str = "LATENCY", streams: int = 0, precision: str | None = None):
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
        core = ov.Core()
        model = core.read_model(str(self.path))
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_static and shape.rank.get_length() >= 1 and shape[0].is_static:
                shape[0] = ov.Dimension()  # a dynamic batch, whatever the export fixed
                shapes[port.get_any_name()] = shape
        if shapes:
            model.reshape(shapes)
        properties: dict[str, object] = {"PERFORMANCE_HINT": hint}
        if threads:
            streams = streams or max(1, (os.cpu_count() or 1) // threads)
            properties["INFERENCE_NUM_THREADS"] = int(threads) * streams
        if streams:
            properties["NUM_STREAMS"] = int(streams)
        if precision:
            properties["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(model, "CPU", properties)
        self._requests = threading.local()  # an infer request serves one call at a time
        self._input_names = [p.get_any_name() for p in self.compiled.inputs]
        self._outputs = {p.get_any_name(): p for p in self.compiled.outputs}
        self._input_shape = [d.get_length() if d.is_static else None
                             for d in self.compiled.inputs[0].get_partial_shape()]
        self._output_shape = [d.get_length() if d.is_static else None
                              for d in self.compiled.outputs[0].get_partial_shape()]
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
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
        return list(self._outputs)

    @property
    def output_shape(self) -> list:
        """Shape of the first output; dynamic axes are None."""
        return list(self._output_shape)

    @property
    def fixed_batch(self) -> int | None:
        return None  # reshaped to a dynamic batch in __init__

    def describe(self) -> str:
        """What ran the model, for the manifest: e.g. "openvino 2025.1.0 CPU f32"."""
        return f"openvino {self._version} CPU {self.precision}"

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run one batch (any size); outputs are copies, safe to keep across calls. Safe to
        call from several threads: each thread has its own infer request."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        results = request.infer({self.input_name: np.ascontiguousarray(batch)})
        names = output_names or self.output_names
        return [np.array(results[self._outputs[name]], copy=True) for name in names]


RUNTIMES: dict[str, Callable[..., OnnxModel | OpenVinoModel]] = {
    "onnxruntime": OnnxModel,
    "openvino": OpenVinoModel,
}


def create_runtime(path: str | os.PathLike, runtime: str = "auto", device: str = "cpu",
                   threads: int = 0) -> OnnxModel | OpenVinoModel:
    """Load an ONNX file with the chosen runtime ("auto", "onnxruntime", "openvino").

    Raises:
        ConfigError, MissingExtra: see `resolve_runtime`.
    """
    return RUNTIMES[resolve_runtime(runtime, device)](path, device=device, threads=threads)
