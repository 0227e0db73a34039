"""Learned binary codes: a linear projection stored in a file, applied without torch.

`imgfeat train-hash` writes the projection `codes = sign(embeddings @ weight + bias)` as

    .onnx  a MatMul + Add graph (input "embedding" (n, dim), output "projection" (n, bits)),
           run with onnxruntime; metadata_props hold method, bits and dim.
    .npz   arrays "weight" (dim, bits) float32, "bias" (bits,) float32 and "meta" (a JSON
           string), loaded with numpy.load(allow_pickle=False): a file cannot run code.

The sign is taken in numpy with hashing.pack_bits, so the bits have the same order as the
random projection's. The hasher's name, e.g. "deepbit-256-3fa9c2b1", carries the first
8 hex digits of the file's SHA-256: the manifest says exactly which codes a dataset holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingExtra, ModelUnavailable
from ..storage import atomic_local_path
from .hashing import pack_bits
from ..storage import file_digest

FORMATS = (".onnx", ".npz")
INPUT_NAME, OUTPUT_NAME = "embedding", "projection"


def _check_shapes(weight: np.ndarray, bias: np.ndarray) -> None:
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ConfigError(f"hash weight must be (dim, bits) and bias (bits,), got {weight.shape} and {bias.shape}")
    if weight.shape[1] <= 0 or weight.shape[1] % 8:
        raise ConfigError(f"code bits must be a positive multiple of 8, got {weight.shape[1]}")


def save_hasher(path: str | os.PathLike, weight: np.ndarray, bias: np.ndarray, method: str,
                meta: dict[str, Any] | None = None) -> Path:
    """Write a linear hash to `path` (.onnx or .npz, chosen by the suffix).

    Args:
        path: the output file; its suffix picks the format.
        weight: (dim, bits) projection.
        bias: (bits,) offset added after the projection (centring folded in).
        method: what trained it ("deepbit", "itq", "rproj"): the start of the hasher's name.
        meta: extra JSON-serialisable facts stored with it (training settings, losses).

    Returns:
        The path written.

    Raises:
        ConfigError: an unknown suffix or badly shaped arrays.
    """
    path = Path(path)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    _check_shapes(weight, bias)
    info = {"method": method, "dim": int(weight.shape[0]), "bits": int(weight.shape[1]), **(meta or {})}
    if path.suffix not in (".npz", ".onnx"):
        raise ConfigError(f"hash file must end with .onnx or .npz, got {path.name!r}")
    # a temporary file beside `path`, fsynced and renamed: a full disk or a kill leaves the
    # previous hash file intact, never a truncated one
    with atomic_local_path(path) as tmp:
        if path.suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, weight=weight, bias=bias, meta=np.array(json.dumps(info, sort_keys=True)))
        else:
            _save_onnx(Path(tmp), weight, bias, info)
    return path


def _save_onnx(path: Path, weight: np.ndarray, bias: np.ndarray, info: dict[str, Any]) -> None:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise MissingExtra("onnx", purpose="writing a .onnx hash file (or write .npz instead)") from exc
    dim, bits = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "weight"], ["projected"]),
         helper.make_node("Add", ["projected", "bias"], [OUTPUT_NAME])],
        "imgfeat_hash",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", bits])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    # opset 13 and IR 8: every onnxruntime of the last years runs it
    model = helper.make_model(graph, producer_name="imgfeat", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in info.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


class LinearHasher:
    """sign(embeddings @ weight + bias), packed 8 bits to a byte; computed in numpy.

    Attributes:
        name: "<method>-<bits>-<sha256 of the file, 8 hex>" (or "<method>-<bits>" in memory).
        bits, dim: code and embedding sizes.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, method: str, digest: str | None = None,
                 meta: dict[str, Any] | None = None):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        _check_shapes(weight, bias)
        self.weight, self.bias = weight, bias
        self.dim, self.bits = int(weight.shape[0]), int(weight.shape[1])
        self.method = method
        self.digest = digest
        self.meta = meta or {}
        self.name = f"{method}-{self.bits}" + (f"-{digest[:8]}" if digest else "")

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """The real-valued projection (n, bits) whose signs are the code."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {embeddings.shape}")
        return embeddings @ self.weight + self.bias

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return pack_bits(self.project(embeddings))


class OnnxHasher(LinearHasher):
    """A hash file in ONNX form: the projection runs in onnxruntime, the sign in numpy."""

    def __init__(self, path: Path, method: str, weight: np.ndarray, bias: np.ndarray, digest: str,
                 meta: dict[str, Any]):
        super().__init__(weight, bias, method, digest, meta)
        from .runtimes import OnnxModel

        self.model = OnnxModel(path, threads=1)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {embeddings.shape}")
        return self.model.run(embeddings, [OUTPUT_NAME])[0]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            weight, bias = archive["weight"], archive["bias"]
            meta = json.loads(str(archive["meta"])) if "meta" in archive.files else {}
    except (ValueError, KeyError, OSError) as exc:
        # allow_pickle=False turns an object array (a pickle) into a ValueError: refuse it
        raise ConfigError(f"{path} is not a valid imgfeat hash file (.npz with weight, bias, meta): {exc}") from exc
    return weight, bias, meta


def _read_onnx(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        import onnx
        from google.protobuf.message import DecodeError
        from onnx import numpy_helper
    except ImportError as exc:
        raise MissingExtra("onnx", purpose="reading a .onnx hash file") from exc
    try:
        model = onnx.load_model(str(path))
    except (DecodeError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable ONNX file: {exc}") from exc
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if "weight" not in tensors or "bias" not in tensors:
        raise ConfigError(f"{path} is not an imgfeat hash file (no weight/bias initialisers); "
                          "write one with `imgfeat train-hash`")
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    return tensors["weight"], tensors["bias"], meta


def load_hasher(path: str | os.PathLike, dim: int) -> LinearHasher:
    """Load a hash file written by `imgfeat train-hash` (or `save_hasher`).

    Args:
        path: the .onnx or .npz file.
        dim: the embedding size of the embedder it will be applied to.

    Returns:
        A hasher: `name`, `bits`, `__call__(embeddings (n, dim)) -> uint8 (n, bits // 8)`.

    Raises:
        ModelUnavailable: the file does not exist.
        ConfigError: not a hash file, or trained for another embedding size.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"hash file not found: {path} (train one with `imgfeat train-hash`)")
    if path.suffix == ".npz":
        weight, bias, meta = _read_npz(path)
    elif path.suffix == ".onnx":
        weight, bias, meta = _read_onnx(path)
    else:
        raise ConfigError(f"hash file must end with .onnx or .npz, got {path.name!r}")
    if weight.ndim != 2 or weight.shape[0] != dim:
        raise ConfigError(f"{path} was trained for {weight.shape[0] if weight.ndim == 2 else '?'}-d "
                          f"embeddings ({meta.get('embedder', 'unknown embedder')}), but the embedder "
                          f"gives {dim}-d; train a hash on features of this embedder")
    method = str(meta.get("method", "learned"))
    digest = file_digest(path)
    if path.suffix == ".onnx":
        return OnnxHasher(path, method, weight, bias, digest, meta)
    return LinearHasher(weight, bias, method, digest, meta)
