"""Runners execute a PipelineConfig over a Source into a ParquetSink.

Every runner takes the same arguments and returns a RunReport; "local" is the reference.
Engine runners (Spark, Ray) import their engines lazily.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .local import RunReport, run_local

RUNNERS: dict[str, Callable[..., RunReport]] = {"local": run_local}


def get_runner(name: str) -> Callable[..., RunReport]:
    if name not in RUNNERS:
        raise ConfigError(f"unknown engine {name!r}; available: {', '.join(sorted(RUNNERS))}")
    return RUNNERS[name]


__all__ = ["RUNNERS", "RunReport", "get_runner", "run_local"]
