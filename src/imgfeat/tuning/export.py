"""Export a fine-tuned network as an ONNX embedder, with its preprocessing recorded inside.

    export_embedder(net, spec, path)   images (N, 3, H, W) -> embedding (N, dim), dynamic batch

The preprocessing (input size, layout, scale, mean/std, interpolation) goes into the file's
metadata under `models.onnx_meta.PREPROCESS_KEY`; `imgfeat extract --embedder onnx:PATH` reads
it back, so nothing has to be repeated on the command line. The file is written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingExtra
from ..models.mobilenet_v2 import EMBED_NAME, INPUT_NAME, quiet_exporter
from ..models.onnx_meta import PREPROCESS_KEY, spec_to_json
from ..models.preprocess import InputSpec
from ..storage import atomic_write
from .model import FinetuneNet


def export_embedder(net: FinetuneNet, spec: InputSpec, path: str | os.PathLike, *,
                    about: dict[str, str] | None = None, opset: int = 17) -> Path:
    """Write `net` as an ONNX embedder at `path`.

    Args:
        net: the network (its head output is the embedding; the embedder L2-normalises it).
        spec: the preprocessing the network was trained with (recorded in the file).
        path: the .onnx file to write.
        about: more metadata entries (strings), e.g. the training summary.
        opset: ONNX opset (TorchScript exporter: fast, and enough for a CNN).

    Raises:
        MissingExtra: the onnx package is not installed (`pip install 'imgfeat[finetune]'`).
    """
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtra("onnx", extra="finetune", purpose="exporting the fine-tuned embedder") from exc
    net = net.eval()
    example = torch.zeros(2, 3, *spec.size)  # batch 2: no specialisation on a batch of 1
    buffer = io.BytesIO()
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(net, (example,), buffer, input_names=[INPUT_NAME], output_names=[EMBED_NAME],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, EMBED_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    entries: dict[str, Any] = {PREPROCESS_KEY: spec_to_json(spec), **(about or {})}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.doc_string = "imgfeat fine-tuned embedder"
    onnx.checker.check_model(proto)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(target), proto.SerializeToString())
    return target
