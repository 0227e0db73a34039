"""Parquet tables (a file or a folder of them) holding image bytes, or paths to images."""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import fsspec
from fsspec.core import url_to_fs

from ..errors import ConfigError, SourceError
from ..storage import NO_RETRY, ReadFailure, Retry, is_url
from .base import (
    PARQUET_SUFFIXES,
    PATH_COLUMN_NAMES,
    Item,
    ListedSource,
    ReadResult,
    Source,
    SourceRequest,
    read_one,
    stable_id,
)
from .files import FileSource, protocol_uri


class ParquetSource(ListedSource):
    """Rows of a Parquet file or dataset holding image bytes (or paths, see `_parquet_source`)."""

    kind = "parquet"

    def __init__(self, spec: str, files: list[str], content_column: str, id_column: str | None):
        import pyarrow.parquet as pq

        self._content_column = content_column
        self._cache: tuple[Any, Any] | None = None
        items = []
        for file in files:
            with fsspec.open(file, "rb") as fh:
                meta = pq.ParquetFile(fh)
                ids = meta.read(columns=[id_column]).column(0).to_pylist() if id_column else None
                row = 0
                for group in range(meta.num_row_groups):
                    for offset in range(meta.metadata.row_group(group).num_rows):
                        uri = f"{file}#row={row}"
                        item_id = str(ids[row]) if ids is not None else stable_id(uri)
                        items.append(Item(item_id, uri, (file, group, offset)))
                        row += 1
        if id_column and len({i.id for i in items}) != len(items):
            raise SourceError(f"{spec}: the id column {id_column!r} has duplicate values")
        super().__init__(items, {"kind": "parquet", "spec": spec, "content_column": content_column,
                                 "id_column": id_column})

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def _row_group(self, file: str, group: int) -> Any:
        import pyarrow.parquet as pq

        key = (file, group)
        cached = self._cache  # one read of the attribute: other decode threads may replace it
        if cached is None or cached[0] != key:
            with fsspec.open(file, "rb") as fh:
                column = pq.ParquetFile(fh).read_row_group(group, columns=[self._content_column]).column(0)
            cached = self._cache = (key, column)
        return cached[1]

    def _value(self, ref: tuple[str, int, int], max_bytes: int) -> bytes:
        file, group, offset = ref
        value = self._row_group(file, group)[offset].as_py()
        if value is None:
            raise ReadFailure("read-error", "null content")
        if len(value) > max_bytes:
            raise ReadFailure("too-large", f"{len(value)} bytes > limit {max_bytes}")
        return bytes(value)

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]:
        return [read_one(item, functools.partial(self._value, item.ref, max_bytes)) for item in items]


def parquet_files(spec: str) -> list[str]:
    fs, root = url_to_fs(spec)
    protocol = spec.split("://", 1)[0] if is_url(spec) else None
    if fs.isdir(root):
        found = sorted(p for p in fs.find(root) if p.lower().endswith(PARQUET_SUFFIXES)
                       and not os.path.basename(p).startswith((".", "_")))
    else:
        found = [root]
    if protocol and protocol != "file":
        return [protocol_uri(protocol, p) for p in found]
    return found


def open_parquet(request: SourceRequest) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec, content_column, path_column, id_column = (request.spec, request.content_column,
                                                    request.path_column, request.id_column)
    files = parquet_files(spec)
    if not files:
        raise SourceError(f"no Parquet files under {spec}")
    with fsspec.open(files[0], "rb") as fh:
        schema = pq.read_schema(fh)
    names = schema.names
    for column in (content_column, path_column, id_column):
        if column and column not in names:
            raise ConfigError(f"{spec}: no column {column!r}; columns are {names}")
    if content_column is None and path_column is None:
        binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        paths = [n for n in names if n.lower() in PATH_COLUMN_NAMES]
        if binary:
            content_column = binary[0]
        elif paths:
            path_column = paths[0]
        else:
            raise ConfigError(f"{spec}: found no binary column and no path column among {names}; "
                              "name one with --content-column or --path-column")
    if content_column:
        return ParquetSource(spec, files, content_column, id_column)
    uris, ids = [], []
    for file in files:
        with fsspec.open(file, "rb") as fh:
            table = pq.read_table(fh, columns=[c for c in (path_column, id_column) if c])
        uris += [str(u) for u in table.column(path_column).to_pylist()]
        if id_column:
            ids += [str(i) for i in table.column(id_column).to_pylist()]
    return FileSource(uris, {"kind": "parquet-paths", "spec": spec, "path_column": path_column,
                             "id_column": id_column}, ids=dict(zip(uris, ids)) if id_column else None)


def _all_parquet(fs: Any, path: str) -> bool:
    """Whether the folder holds Parquet files only; stops at the first other file (a photo
    folder answers at its first folder, instead of listing everything a second time)."""
    found = False
    for _, _, files in fs.walk(path):
        for name in files:
            if name.startswith((".", "_")):
                continue
            if not name.lower().endswith(PARQUET_SUFFIXES):
                return False
            found = True
    return found


def is_parquet(request: SourceRequest) -> bool:
    if request.lower.endswith(PARQUET_SUFFIXES) or request.content_column:
        return True
    fs, path, _, is_dir = request.probe()
    return is_dir and _all_parquet(fs, path)
