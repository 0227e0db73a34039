"""INT8 post-training quantisation: an fp32 ONNX file in, a calibrated int8 ONNX file out.

    quantized_model(fp32_path, calibration_batches) -> Path of the int8 file (cached)
    calibration_photos() -> the RGB photos that ship with imgfeat (samples/), the calibration set

onnxruntime's static quantisation (`onnxruntime.quantization.quantize_static`, no new
dependency) in QDQ format: int8 weights per output channel, uint8 activations whose ranges
are the min/max seen on the calibration batches, i.e. the networks' real inputs made from
the sample photos by the models' own preprocessing. Both onnxruntime and OpenVINO read the QDQ
file and run its convolutions in int8.

The file is cached under `$IMGFEAT_HOME/models/int8/`, named by the fp32 file's digest, the
quantisation settings and the calibration tensors, and written to a temporary name first, so a
crash never leaves half a model and a change of any input makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, MissingExtra
from ..storage import file_digest, imgfeat_home

# Why these settings (measured on the sample photos, docs/benchmarks.md "INT8"):
# - QDQ, per-channel int8 weights, uint8 activations: the format both runtimes execute in int8.
# - reduce_range (7-bit weights): on AVX2 without VNNI the u8 x s8 multiply-add (vpmaddubsw)
#   adds pairs into a saturating int16; 7-bit weights keep the sums inside it
#   (onnxruntime's quantisation docs). Measured: with 8-bit weights the main object changed
#   on 13-14 of the 14 photos and embedding cosines fell to 0.67-0.79, on both runtimes.
#   CPUs with VNNI do not need it, but one file serves every CPU.
# - float heads (`head_nodes`): continuous scores instead of uint8 steps of the logits.
# - tried and not taken: uint8 weights with the full range (the other cure for saturation)
#   raised the embedder's worst cosine from 0.962 to 0.978 but lost the detector's main
#   object on 8-9 of 14 photos; depthwise convolutions in float helped OpenVINO (cosine
#   0.978, 3 main objects changed) but broke onnxruntime's detector outright; percentile and
#   entropy calibration: within 0.003 of min/max on the embedder, and onnxruntime's
#   histograms refuse the detector's inputs of several shapes.
SETTINGS = {"format": "QDQ", "per_channel": True, "reduce_range": True, "activations": "uint8",
            "weights": "int8", "calibration": "minmax", "op_types": None,
            "float_heads": True, "version": 1}

CALIBRATION_ENV = "IMGFEAT_CALIBRATION"
_SAMPLES = Path(__file__).resolve().parents[3] / "samples"  # the repository's photos
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
_MAX_SIDE = 1024  # the detector's input is 512 on the long side; smaller decodes are enough


def calibration_folder() -> Path:
    """The calibration photos' folder: $IMGFEAT_CALIBRATION, else the `samples/` folder of the
    imgfeat source tree (14 real photos: people, animals, objects, indoor and outdoor).

    Raises:
        ConfigError: the folder is missing or holds no photos.
    """
    folder = Path(os.environ.get(CALIBRATION_ENV) or _SAMPLES)
    if not folder.is_dir() or not any(p.suffix.lower() in _PHOTO_SUFFIXES for p in folder.iterdir()):
        raise ConfigError(f"precision int8 calibrates on photos, and {folder} holds none: set "
                          f"{CALIBRATION_ENV} to a folder of a dozen or more typical JPEG/PNG photos "
                          "(imgfeat's source tree ships them in samples/), or use --precision fp32")
    return folder


def calibration_photos(folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """The calibration photos as RGB uint8 arrays (long side at most 1024), in name order.

    Raises:
        ConfigError: see `calibration_folder`.
    """
    from PIL import Image

    folder = Path(folder) if folder else calibration_folder()
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in _PHOTO_SUFFIXES:
            with Image.open(path) as image:
                image.thumbnail((_MAX_SIDE, _MAX_SIDE))
                photos.append(np.asarray(image.convert("RGB")))
    return photos


def calibration_key(fp32_path: str | os.PathLike, batches: Sequence[np.ndarray]) -> str:
    """What names the int8 file: the fp32 file, the settings and every calibration tensor."""
    digest = hashlib.sha256()
    digest.update(file_digest(fp32_path, 64).encode())
    digest.update(json.dumps(SETTINGS, sort_keys=True).encode())
    for batch in batches:
        digest.update(str((batch.shape, str(batch.dtype))).encode())
        digest.update(np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()[:16]


def quantized_model(fp32_path: str | os.PathLike, batches: Sequence[np.ndarray],
                    folder: str | os.PathLike | None = None) -> Path:
    """The int8 version of an fp32 ONNX file, calibrated on `batches`; made once, then cached.

    Args:
        fp32_path: the float ONNX model (one input).
        batches: input tensors exactly as the model is fed them (shapes may differ).
        folder: where int8 files are kept; default `$IMGFEAT_HOME/models/int8`.

    Returns:
        The path of the int8 ONNX file.

    Raises:
        ConfigError: no calibration batches.
        MissingExtra: onnxruntime's quantisation tools (they need the `onnx` package) are missing.
    """
    if not batches:
        raise ConfigError("int8 quantisation needs at least one calibration batch")
    fp32_path = Path(fp32_path)
    folder = Path(folder) if folder else imgfeat_home() / "models" / "int8"
    target = folder / f"{fp32_path.stem}-int8-{calibration_key(fp32_path, batches)}.onnx"
    if target.exists():
        return target
    try:
        import onnx  # noqa: F401  (onnxruntime's quantisation tools read and write with it)
    except ImportError as exc:
        raise MissingExtra("onnx", extra="int8", purpose="quantising the models to int8 once") from exc
    from ..storage import atomic_local_path

    # onnxruntime logs a hint to pre-process the model on the root logger, twice per model
    root = logging.getLogger()
    root.addFilter(_no_preprocess_hint)
    try:
        with atomic_local_path(target) as tmp:
            _quantize(fp32_path, tmp, batches)
    finally:
        root.removeFilter(_no_preprocess_hint)
    return target


def _no_preprocess_hint(record: logging.LogRecord) -> bool:
    return "pre-process" not in record.getMessage()


def _quantize(fp32_path: Path, target: str, batches: Sequence[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32_path), target, _Batches(_first_input(fp32_path).name, batches),
        quant_format=QuantFormat.QDQ, per_channel=SETTINGS["per_channel"],
        reduce_range=SETTINGS["reduce_range"], activation_type=QuantType.QUInt8,
        weight_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[SETTINGS["weights"]],
        op_types_to_quantize=SETTINGS["op_types"],
        nodes_to_exclude=head_nodes(fp32_path) if SETTINGS["float_heads"] else None,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[SETTINGS["calibration"]],
        # min/max folded in every few batches: the detector's activations of all 14
        # photos at once would take gigabytes
        extra_options={"CalibMaxIntermediateOutputs": 4})


def _first_input(path: str | os.PathLike):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]


def head_nodes(path: str | os.PathLike) -> list[str]:
    """The nodes between each output and the last convolution (or matrix product) before it,
    that one included: the heads that write the scores, box sizes and pooled features.

    Kept in float because their outputs are what imgfeat reads: with the heads in uint8 the
    detector's scores came out in steps of ~0.05 (0.563, 0.621, 0.680 on the sample photos:
    the sigmoid of quantised logits), in float they are continuous; the main objects were
    no worse for it.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    heads, stack, seen = [], [o.name for o in graph.output], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        heads.append(node.name)
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            stack.extend(node.input)
    return heads


def model_input_shape(path: str | os.PathLike) -> list:
    """The first input's shape of an ONNX file (free axes as strings or None)."""
    return list(_first_input(path).shape)


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of input tensors."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]):
        self._feeds = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)
