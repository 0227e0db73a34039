"""Name -> model factory, timm-style: the tables and the decorators that fill them.

    @register_detector("my-detector", description="...", input_size="512x512", licence="MIT")
    def _make(device="cpu", threads=0, runtime="auto", precision="auto", min_score=0.0): return MyDetector(...)

This module imports no model: modules that define models import it to register them, and
`models/factory.py` imports those modules and builds models by name. A factory takes the
keyword arguments `device`, `threads`, `runtime`, `precision` (and `min_score` for detectors) and
returns an object that satisfies `models.protocols.Detector` or `Embedder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what `imgfeat models` says about it."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    input_size: str = ""
    licence: str = ""
    test: bool = False  # a tiny model for tests: hidden from `imgfeat models` unless asked


DETECTORS: dict[str, ModelEntry] = {}
EMBEDDERS: dict[str, ModelEntry] = {}


def _register(table: dict[str, ModelEntry], name: str, **about: Any) -> Callable:
    def wrap(factory: Callable) -> Callable:
        table[name] = ModelEntry(name, factory, test=name.startswith("test-"), **about)
        return factory
    return wrap


def register_detector(name: str, *, description: str = "", input_size: str = "", licence: str = "") -> Callable:
    """Decorator: register a detector factory under `name` ("test-*" names are test models)."""
    return _register(DETECTORS, name, description=description, input_size=input_size, licence=licence)


def register_embedder(name: str, *, description: str = "", input_size: str = "", licence: str = "") -> Callable:
    """Decorator: register an embedder factory under `name` ("test-*" names are test models)."""
    return _register(EMBEDDERS, name, description=description, input_size=input_size, licence=licence)
