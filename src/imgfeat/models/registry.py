"""Name -> model factory, timm-style.

    @register_detector("my-detector")
    def _make(device="cpu", threads=0): return MyDetector(...)

`create_detector("onnx:/path/model.onnx")` and `create_embedder("onnx:/path/model.onnx")`
load a user's own ONNX model; "torchvision:NAME" and "timm:NAME" embedders need those
packages. Unknown names raise UnknownModel listing the valid ones.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UnknownModel

_DETECTORS: dict[str, Callable[..., Any]] = {}
_EMBEDDERS: dict[str, Callable[..., Any]] = {}
_PREFIXES = ("onnx:", "torchvision:", "timm:")


def register_detector(name: str) -> Callable:
    def wrap(factory: Callable) -> Callable:
        _DETECTORS[name] = factory
        return factory
    return wrap


def register_embedder(name: str) -> Callable:
    def wrap(factory: Callable) -> Callable:
        _EMBEDDERS[name] = factory
        return factory
    return wrap


def _populate() -> None:
    # Importing these modules runs their @register_* decorators; they import nothing heavy.
    from . import detectors, embedders, testing  # noqa: F401


def list_detectors() -> list[str]:
    _populate()
    return sorted(_DETECTORS)


def list_embedders() -> list[str]:
    _populate()
    return sorted(_EMBEDDERS)


def _unknown(kind: str, name: str, known: list[str]) -> UnknownModel:
    return UnknownModel(
        f"unknown {kind} {name!r}. Known: {', '.join(known)}; or 'onnx:PATH' for your own ONNX "
        f"model{'' if kind == 'detector' else ', torchvision:NAME, timm:NAME'}. New models are added "
        f"with imgfeat.models.register_{kind}(name).")


def create_detector(name: str, **kwargs: Any) -> Any:
    """Build a detector by registry name (or "onnx:PATH"). kwargs: device, threads, runtime."""
    _populate()
    if name.startswith("onnx:"):
        from .detectors import OnnxDetector
        return OnnxDetector(name[len("onnx:"):], **kwargs)
    if name not in _DETECTORS:
        raise _unknown("detector", name, list_detectors())
    return _DETECTORS[name](**kwargs)


def create_embedder(name: str, **kwargs: Any) -> Any:
    """Build an embedder by registry name, "onnx:PATH", "torchvision:NAME" or "timm:NAME"."""
    _populate()
    if name.startswith("onnx:"):
        from .embedders import OnnxEmbedder
        return OnnxEmbedder(name[len("onnx:"):], name=name, **kwargs)
    if name.startswith(("torchvision:", "timm:")):
        from .torch_hub import TorchHubEmbedder
        kwargs.pop("runtime", None)  # torch runs these; the ONNX runtime choice does not apply
        return TorchHubEmbedder(name, **kwargs)
    if name not in _EMBEDDERS:
        raise _unknown("embedder", name, list_embedders())
    return _EMBEDDERS[name](**kwargs)
