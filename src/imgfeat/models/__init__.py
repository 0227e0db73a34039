"""Models: a registry of detectors and embedders, the runtimes that run them, binary hashers.

Nothing heavy is imported here; `create_detector` / `create_embedder` load on demand.
"""

from .registry import (
    create_detector, create_embedder, list_detectors, list_embedders,
    register_detector, register_embedder,
)
from .hashing import create_hasher

__all__ = [
    "create_detector", "create_embedder", "create_hasher", "list_detectors",
    "list_embedders", "register_detector", "register_embedder",
]
