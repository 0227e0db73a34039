"""imgfeat over a table you already hold (a Spark DataFrame, a Ray Dataset): the shared part.

`imgfeat.spark.extract(df)` and `imgfeat.ray.extract(ds)` find the id/path/bytes columns with
`choose_columns` and run `table_features` on each Arrow batch in the engine's workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from .config import PipelineConfig
from .errors import ConfigError
from .runners.tasks import cached_pipeline
from .sources import PATH_COLUMN_NAMES, FileSource, Item, stable_id
from .stages import ReadDecode


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a user's table hold the id, the path and the image bytes."""

    path: str | None
    content: str | None
    id: str | None


def choose_columns(names: Sequence[str], path_col: str | None, content_col: str | None,
                   id_col: str | None) -> TableColumns:
    """Check the columns asked for, or find them: content "content"/"bytes", path "path"/"uri"...

    Raises:
        ConfigError: a named column is missing, or there is neither bytes nor paths, or
            neither an id nor a path to make ids from.
    """
    for column in (path_col, content_col, id_col):
        if column and column not in names:
            raise ConfigError(f"no column {column!r}; columns are {list(names)}")
    if content_col is None:
        content_col = next((n for n in ("content", "bytes", "image_bytes") if n in names), None)
    if path_col is None:
        path_col = next((n for n in names if n.lower() in PATH_COLUMN_NAMES), None)
    if content_col is None and path_col is None:
        raise ConfigError(f"found no bytes column and no path column among {list(names)}; "
                          "name one with content_col= or path_col=")
    if path_col is None and id_col is None:
        raise ConfigError("a table of bytes needs id_col= or path_col= to give each row a stable id")
    return TableColumns(path_col, content_col, id_col)


def plain_path(uri: str) -> str:
    """"file:/x" and "file:///x" (Spark, Hadoop) -> "/x", so ids match the local runner's."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:/"):
        return uri[len("file:"):]
    return uri


def table_features(batch: pa.Table, config: PipelineConfig, columns: TableColumns) -> pa.Table:
    """The output rows of one batch of a user's table.

    With a bytes column this is `Pipeline(config)` on (id, path, content); with only paths the
    worker reads them like the local runner does, so a missing file is a "not-found" row.
    """
    pipeline = cached_pipeline(config)
    paths = ([plain_path(str(p)) for p in batch.column(columns.path).to_pylist()]
             if columns.path else None)
    ids = ([str(i) for i in batch.column(columns.id).to_pylist()] if columns.id
           else [stable_id(p) for p in paths])
    paths = paths if paths is not None else ids
    if columns.content:
        content = batch.column(columns.content)
        if not pa.types.is_binary(content.type):
            content = content.cast(pa.binary())
        return pipeline(pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string()),
                                  "content": content}))
    items = [Item(i, p, p) for i, p in zip(ids, paths)]
    reader = ReadDecode(FileSource([], {"kind": "paths"}), config.decode, config.run.retry)
    return pipeline.features(reader(items))
