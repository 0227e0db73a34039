"""Build models by name: `create_detector`, `create_embedder`, `create_hasher`, and listings.

    create_detector("centernet-mbv3", runtime="auto", min_score=0.3)
    create_detector("onnx:/path/det.onnx", labels="coco.names")
    create_embedder("mobilenet-v2"); create_embedder("onnx:emb.onnx"); create_embedder("timm:NAME")
    create_hasher("rproj", dim=1280, bits=256); create_hasher("hash.onnx", dim=1280, bits=0)

The modules that register models are imported on first use (`_populate`), so `import imgfeat`
stays light; they import `registry`, never this module. Unknown names raise UnknownModel.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, UnknownModel
from .hashing import RandomProjectionHasher
from .protocols import Detector, Embedder, Hasher
from .registry import DETECTORS, EMBEDDERS, ModelEntry

PREFIXES = ("onnx:", "torchvision:", "timm:")


def _populate() -> None:
    # importing these runs their @register_* decorators
    from . import detectors, embedders, testing  # noqa: F401


def list_detectors(include_tests: bool = True) -> list[str]:
    """Registered detector names (test-* models too unless `include_tests` is False)."""
    _populate()
    return sorted(n for n, e in DETECTORS.items() if include_tests or not e.test)


def list_embedders(include_tests: bool = True) -> list[str]:
    """Registered embedder names (test-* models too unless `include_tests` is False)."""
    _populate()
    return sorted(n for n, e in EMBEDDERS.items() if include_tests or not e.test)


def model_entries(kind: str) -> list[ModelEntry]:
    """The registry entries of "detector" or "embedder", by name."""
    _populate()
    table = {"detector": DETECTORS, "embedder": EMBEDDERS}[kind]
    return [table[name] for name in sorted(table)]


def _unknown(kind: str, name: str, known: list[str]) -> UnknownModel:
    return UnknownModel(
        f"unknown {kind} {name!r}. Known: {', '.join(known)}; or 'onnx:PATH' for your own ONNX "
        f"model{'' if kind == 'detector' else ', torchvision:NAME, timm:NAME'}. New models are added "
        f"with imgfeat.models.register_{kind}(name).")


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build a detector by registry name (or "onnx:PATH").

    Args:
        name: a registered name or "onnx:PATH".
        kwargs: device, threads, runtime; min_score (detections below it may be left out);
            for onnx:PATH also labels (a class-names file or a list), scale, mean, std.

    Raises:
        UnknownModel: the name is not registered.
        ModelUnavailable, MissingExtra: the model cannot be built here.
    """
    _populate()
    if name.startswith("onnx:"):
        from .detectors import OnnxDetector

        path, _, options = name[len("onnx:"):].partition(",labels=")  # onnx:det.onnx,labels=names.txt
        if options:
            kwargs.setdefault("labels", options)
        return OnnxDetector(path, **kwargs)
    if name not in DETECTORS:
        raise _unknown("detector", name, list_detectors(include_tests=False))
    return DETECTORS[name].factory(**kwargs)


def create_embedder(name: str, **kwargs: Any) -> Embedder:
    """Build an embedder by registry name, "onnx:PATH", "torchvision:NAME" or "timm:NAME".

    Raises:
        UnknownModel: the name is not registered.
        ModelUnavailable, MissingExtra: the model cannot be built here.
    """
    _populate()
    if name.startswith("onnx:"):
        from .embedders import OnnxEmbedder

        return OnnxEmbedder(name[len("onnx:"):], name=name, **kwargs)
    if name.startswith(("torchvision:", "timm:")):
        from .torch_hub import TorchHubEmbedder

        kwargs.pop("runtime", None)  # torch runs these; the ONNX runtime choices do not apply
        if kwargs.pop("precision", None) == "int8":
            raise ConfigError(f"{name} runs on torch, which imgfeat does not quantise: use --precision "
                              "fp32 (or auto), or export it to ONNX and pass onnx:PATH for int8")
        return TorchHubEmbedder(name, **kwargs)
    if name not in EMBEDDERS:
        raise _unknown("embedder", name, list_embedders(include_tests=False))
    return EMBEDDERS[name].factory(**kwargs)


def create_hasher(name: str, dim: int, bits: int, seed: int = 0) -> Hasher:
    """Build the code function named `name` for embeddings of size `dim`.

    "rproj" is the seeded random projection with `bits` bits; a path to a learned hash
    file (written by `imgfeat train-hash`) loads that hash, whose own bit count wins.

    Raises:
        ConfigError: an unknown name, or bits that are not a positive multiple of 8.
    """
    if name == "rproj":
        return RandomProjectionHasher(dim, bits, seed)
    if name.endswith((".onnx", ".npz")):
        from .learned_hash import load_hasher

        return load_hasher(name, dim)
    raise ConfigError(f"unknown hasher {name!r}; use 'rproj' or the path of a learned hash file "
                      "(imgfeat train-hash)")
