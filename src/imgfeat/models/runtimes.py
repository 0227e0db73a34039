"""Inference runtimes. onnxruntime on CPU is the default; `device="cuda"` asks for its CUDA provider."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingExtra


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file, first `length` hex digits: the model fingerprint in the manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


class OnnxModel:
    """An onnxruntime session with the options imgfeat wants.

    Args:
        path: the .onnx file.
        device: "cpu" or "cuda" (needs onnxruntime-gpu: `pip install 'imgfeat[gpu]'`).
        threads: intra-op threads; 0 lets onnxruntime use every core.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise MissingExtra("onnxruntime", purpose="running ONNX models") from exc
        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
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

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> list:
        return list(self.inputs[0].shape)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph insists on, or None when the batch axis is dynamic."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def run(self, batch: np.ndarray, output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run one batch; splits it when the graph has a fixed batch size."""
        fixed = self.fixed_batch
        if fixed is None or batch.shape[0] == fixed:
            return self.session.run(output_names, {self.input_name: batch})
        parts = [self.session.run(output_names, {self.input_name: batch[i:i + fixed]})
                 for i in range(0, batch.shape[0], fixed)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
