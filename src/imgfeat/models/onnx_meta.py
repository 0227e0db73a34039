"""Preprocessing recorded inside an ONNX file (its metadata_props), read back by OnnxEmbedder.

    spec_to_json(spec) -> str            what `imgfeat finetune` writes under PREPROCESS_KEY
    recorded_spec(path) -> InputSpec | None

A model that records how its input was prepared needs no flags to be used correctly; a file
without the entry (any other ONNX model) keeps the embedder's defaults.
"""

from __future__ import annotations

import json
import os

from ..errors import ConfigError
from .preprocess import InputSpec

PREPROCESS_KEY = "imgfeat.preprocess"


def spec_to_json(spec: InputSpec) -> str:
    """An InputSpec as the JSON text stored in the model file."""
    return json.dumps({"size": list(spec.size), "layout": spec.layout, "scale": spec.scale,
                       "mean": None if spec.mean is None else list(spec.mean),
                       "std": None if spec.std is None else list(spec.std),
                       "interpolation": spec.interpolation}, sort_keys=True)


def spec_from_json(text: str) -> InputSpec:
    """The InputSpec of `spec_to_json`'s text.

    Raises:
        ConfigError: the text is not a valid recorded preprocessing.
    """
    try:
        fields = json.loads(text)
        return InputSpec(size=tuple(int(v) for v in fields["size"]), layout=str(fields["layout"]),
                         scale=float(fields["scale"]),
                         mean=None if fields["mean"] is None else tuple(float(v) for v in fields["mean"]),
                         std=None if fields["std"] is None else tuple(float(v) for v in fields["std"]),
                         interpolation=str(fields["interpolation"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the model's recorded preprocessing ({PREPROCESS_KEY}) is invalid: {exc}") from exc


def recorded_spec(path: str | os.PathLike) -> InputSpec | None:
    """The preprocessing recorded in the ONNX file at `path`, or None when it records none."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(PREPROCESS_KEY)
    return None if text is None else spec_from_json(text)
