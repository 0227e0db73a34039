"""imgfeat on a Ray Dataset you already have: `imgfeat.ray.extract(ds) -> Dataset`.

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    features = imgfeat.ray.extract(ds)               # bytes + path columns found by name
    features.write_parquet("s3://bucket/features/")  # Ray's own writer

The batches run on an actor pool; each actor builds the models once. Bad images are rows
with status "error". For a whole run with resume and the shard layout of the local runner,
use the CLI: `imgfeat extract SRC -o OUT --engine ray`.
"""

from __future__ import annotations

from typing import Any

from .config import PipelineConfig
from .errors import MissingExtra
from .frames import TableColumns, choose_columns, table_features
from .runners.tasks import cached_pipeline, with_threads


class FeatureActor:
    """The map_batches callable: models loaded in `__init__`, one Arrow batch per call."""

    def __init__(self, config: PipelineConfig, columns: TableColumns, threads: int = 1):
        self.config = with_threads(config, threads)
        self.columns = columns
        cached_pipeline(self.config)

    def __call__(self, batch: Any) -> Any:
        return table_features(batch, self.config, self.columns)


def extract(ds: Any, path_col: str | None = None, content_col: str | None = None,
            id_col: str | None = None, config: PipelineConfig | None = None, *,
            actors: int | None = None, cpus_per_actor: float | None = None, **options: Any) -> Any:
    """Features of the images in a Ray Dataset, as a Dataset in the output schema.

    Args:
        ds: a Dataset with image bytes (`ray.data.read_binary_files(..., include_paths=True)`,
            `read_parquet` of a table with a binary column) and/or paths the actors can read.
        path_col: column of paths; found by name ("path", "uri", ...) when omitted. Ids are
            the SHA-1 of the path, as in the local runner.
        content_col: column of bytes; "bytes" or "content" when omitted. Without one, the
            actors read the paths (a missing file is a "not-found" row).
        id_col: column of your own ids (needed when there is no path column).
        config: a PipelineConfig; or flat options as in `imgfeat.extract`.
        actors: actors in the pool (default: the cluster's CPUs minus one, at least one).
        cpus_per_actor: CPUs each actor reserves (default 1, or a fraction when short).

    Returns:
        A lazy Dataset with the columns of the local output (schema.py), Arrow types kept.
        Write it with `.write_parquet(path)`.

    Raises:
        MissingExtra: ray is not installed.
        ConfigError: bad options, or columns that are missing or cannot be found.

    Example:
        >>> ds = ray.data.read_binary_files("photos/", include_paths=True)  # doctest: +SKIP
        >>> imgfeat.ray.extract(ds).write_parquet("features/")  # doctest: +SKIP
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtra("ray", extra="ray", purpose="imgfeat.ray") from exc
    from .runners.ray_engine import actor_pool, ray_connect

    config = PipelineConfig.resolve(config, options)
    columns = choose_columns(ds.columns(), path_col, content_col, id_col)
    ray_connect()
    size, cpus = actor_pool(actors, cpus_per_actor)
    return ds.map_batches(
        FeatureActor, fn_constructor_kwargs={"config": config, "columns": columns,
                                             "threads": max(1, int(cpus))},
        batch_size=config.chunk_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus)


__all__ = ["FeatureActor", "extract"]
