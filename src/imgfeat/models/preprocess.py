"""Pure functions that turn RGB uint8 images into model input tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: the spec travels with the model, CLI flags may override it.

    Args:
        size: (height, width) the image is resized to (plain stretch, no crop).
        layout: "NCHW" or "NHWC".
        scale: multiply uint8 values by this first (1/255 for 0..1 inputs, 1.0 for 0..255).
        mean, std: per-channel normalisation after scaling (None: none).
        interpolation: "area" (antialiased when shrinking, the look of the PIL resize
            torchvision models are trained with: exact 2x box averages down to under twice the
            target, then bilinear; `resize`) or "linear" (plain bilinear, as TensorFlow's
            resize_bilinear, aliased when shrinking by more than 2x).
    """

    size: tuple[int, int]
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    interpolation: str = "area"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise ConfigError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {self.interpolation!r}")


# OpenCV, not Pillow: on 640x480 -> 512x384 Pillow's bilinear costs ~5.6 ms, OpenCV's ~0.5 ms
# (docs/benchmarks.md), a cost paid for every image on the inference threads.
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def spec_from_shape(shape: Sequence[Any], default_size: int, **options: Any) -> InputSpec:
    """The InputSpec a user's ONNX model implies by its input shape: layout NHWC when the last
    axis is 3 (else NCHW), height and width from the static dims (else `default_size`)."""
    nhwc = len(shape) == 4 and shape[3] == 3
    hw = shape[1:3] if nhwc else shape[2:4]
    size = tuple(int(s) if isinstance(s, int) and s > 0 else default_size for s in hw)
    return InputSpec(size=size, layout="NHWC" if nhwc else "NCHW", **options)


# how `resize` shrinks, recorded in each output's manifest (model_digests["preprocess"]): rows
# resized one way must not be resumed or extended the other way (sinks.py). "area-v1": OpenCV
# INTER_AREA (manifests without the key); "halves-v2": shrink_by_halves, then bilinear.
RESIZE_VERSION = "halves-v2"


def resize(image: np.ndarray, size: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """Resize an H x W x 3 uint8 image to (height, width).

    "area" is antialiased when shrinking (2-pixel box averages by halves, `shrink_by_halves`,
    then bilinear for the last factor under 2) and bilinear when enlarging; "linear" is
    bilinear both ways.
    """
    height, width = size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if interpolation == "area":
        # exact 2x box averages while an axis is at least twice its target, then bilinear for
        # the last step (under 2x): on 1024 x 768 -> 224 x 224 ~6x cheaper than OpenCV's
        # general INTER_AREA, whose cost grows with the source pixels, and as good on the
        # near-duplicate benchmark (docs/benchmarks.md, "Whole-image resize")
        image = shrink_by_halves(image, height, width)
        return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=_INTERPOLATION[interpolation])


def shrink_by_halves(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Halve each axis of an H x W x C uint8 image (2-pixel box average; an odd last row or
    column is dropped) while it is at least twice `height` / `width`.

    OpenCV's INTER_AREA takes its fast integer-factor path here (factors 1 or 2 per axis).
    """
    while True:
        rows, cols = image.shape[:2]
        fy = 2 if rows >= 2 * height else 1
        fx = 2 if cols >= 2 * width else 1
        if fx == fy == 1:
            return image
        image = np.ascontiguousarray(image[:rows - rows % fy, :cols - cols % fx])
        image = cv2.resize(image, (cols // fx, rows // fy), interpolation=cv2.INTER_AREA)


def to_tensor(images: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Resize, scale, normalise and stack images into one float32 batch in the spec's layout."""
    batch = np.stack([resize(img, spec.size, spec.interpolation) for img in images])
    # ((x * scale) - mean) / std as one multiply-add per value, written straight into the
    # output layout: 5x cheaper than step by step (~0.3 instead of ~1.5 ms per 224x224 crop)
    gain = np.full(3, spec.scale, dtype=np.float32)
    shift = np.zeros(3, dtype=np.float32) if spec.mean is None else np.asarray(spec.mean, dtype=np.float32)
    if spec.std is not None:
        gain /= np.asarray(spec.std, dtype=np.float32)
        shift /= np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        batch, gain, shift = batch.transpose(0, 3, 1, 2), gain[:, None, None], shift[:, None, None]
    out = np.empty(batch.shape, dtype=np.float32)
    np.multiply(batch, gain, out=out)
    if shift.any():
        out -= shift
    return out


# aspect_size: the ratios (long side / short side) whole images are resized to, 224 x 224, 288,
# 352 or 448 at a 224 short side. Few steps keep the number of input shapes small (OpenVINO
# compiles one model per shape); on the 61 evaluation photos snapping to these four scored the
# same as every multiple of 32 (a scratch comparison over three benchmark seeds).
ASPECT_STEPS = (1.0, 9 / 7, 11 / 7, 2.0)


def aspect_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) of an image resized with its aspect ratio kept, nearly: the short side
    `side`, the long side `side` x the ASPECT_STEPS ratio nearest the image's (so at most 2x),
    both multiples of 32 (the embedder's stride: its feature map covers the image exactly)."""
    ratio = max(height, width) / max(1, min(height, width))
    step = min(ASPECT_STEPS, key=lambda s: abs(s - ratio))
    short = max(32, int(round(side / 32.0)) * 32)
    long = max(short, int(round(short * step / 32.0)) * 32)
    return (long, short) if height > width else (short, long)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def letterbox(image: np.ndarray, size: int, interpolation: str = "linear",
              out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Fit an image into a size x size square, aspect kept, anchored top-left, zero padding.

    Returns the square and the factor from square pixels back to image pixels; with the
    top-left anchor a box maps back by that one factor, no offset. `out`, a zeroed
    H x W x 3 array of any dtype with H, W >= the scaled image (e.g. one slot of a float32
    batch, size x size or aspect-kept), is filled instead of a new uint8 square.
    """
    height, width = image.shape[:2]
    ratio = size / max(height, width)
    new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
    square = np.zeros((size, size, 3), dtype=np.uint8) if out is None else out
    square[:new_h, :new_w] = resize(image, (new_h, new_w), interpolation)
    return square, max(height, width) / size
