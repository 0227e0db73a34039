"""Runners execute a PipelineConfig over a Source into a ParquetSink.

Every runner takes the same arguments and returns a RunReport; "local" is the reference.
They share `base.py` (plan, report, finish) and `tasks.py` (the engines' shard task).
Engine runners (Spark, Ray, Beam) import their engines lazily. A new runner is a function with
`run_local`'s signature added to RUNNERS.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError, MissingExtra
from .base import RunReport
from .local import run_local


def run_spark(*args: Any, **kwargs: Any) -> RunReport:
    """`runners.spark.run_spark`, imported only when called (needs imgfeat[spark])."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("pyspark", extra="spark", purpose="--engine spark") from exc
    from .spark import run_spark as runner

    return runner(*args, **kwargs)


def run_ray(*args: Any, **kwargs: Any) -> RunReport:
    """`runners.ray_engine.run_ray`, imported only when called (needs imgfeat[ray])."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("ray", extra="ray", purpose="--engine ray") from exc
    from .ray_engine import run_ray as runner

    return runner(*args, **kwargs)


def run_beam(*args: Any, **kwargs: Any) -> RunReport:
    """`runners.beam_engine.run_beam`, imported only when called (needs imgfeat[beam])."""
    try:
        import apache_beam  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("apache-beam", extra="beam", purpose="--engine beam") from exc
    from .beam_engine import run_beam as runner

    return runner(*args, **kwargs)


RUNNERS: dict[str, Callable[..., RunReport]] = {"local": run_local, "spark": run_spark, "ray": run_ray,
                                                "beam": run_beam}


def get_runner(name: str) -> Callable[..., RunReport]:
    if name not in RUNNERS:
        raise ConfigError(f"unknown engine {name!r}; available: {', '.join(sorted(RUNNERS))}")
    return RUNNERS[name]


__all__ = ["RUNNERS", "RunReport", "get_runner", "run_beam", "run_local", "run_ray", "run_spark"]
