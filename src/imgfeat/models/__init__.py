"""Models: a registry of detectors and embedders, the runtimes that run them, binary hashers.

Nothing heavy is imported here: the model modules import their runtimes when a model is built.
"""

from .factory import (
    create_detector, create_embedder, create_hasher, list_detectors, list_embedders, model_entries,
)
from .protocols import Detector, Embedder, Hasher
from .registry import register_detector, register_embedder

__all__ = [
    "Detector", "Embedder", "Hasher", "create_detector", "create_embedder", "create_hasher",
    "list_detectors", "list_embedders", "model_entries", "register_detector", "register_embedder",
]
