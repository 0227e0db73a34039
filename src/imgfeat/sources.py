"""Where images come from: folders, globs, list files, Parquet tables, any fsspec URL.

`open_source(spec)` returns a Source: a small picklable object that lists its inputs as
`Item`s (stable id, URI, a reference for reading) in a fixed order, and reads a batch of
them into bytes. Listing happens once, in the driver; reading happens in the workers.

Kinds, chosen from the spec:
    folder (recursive), local or fsspec URL   photos/, s3://bucket/photos/
    glob                                      photos/**/*.jpg, memory://imgs/*.png
    list file (.txt/.lst one path per line; .csv with a path column)
    Parquet file or folder of Parquet files, with a binary content column or a path column
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import fsspec
from fsspec.core import url_to_fs

from .errors import ConfigError, SourceError

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
PATH_COLUMN_NAMES = ("path", "uri", "url", "image_path", "image_url", "file", "filename")


def stable_id(uri: str) -> str:
    """The default id of an input: 16 hex digits of the SHA-1 of its URI."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    """One input: `ref` is what the source needs to read it (a URI, or a table position)."""

    id: str
    uri: str
    ref: Any = None


@dataclass
class ReadResult:
    """Bytes of one item, or why they could not be read."""

    item: Item
    content: bytes | None = None
    error: str | None = None


class Source:
    """Base class: `list()` the items once, `read(items)` them in any process."""

    kind = "base"

    def list(self) -> list[Item]:
        raise NotImplementedError

    def read(self, items: Sequence[Item], max_bytes: int) -> list[ReadResult]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def _is_url(spec: str) -> bool:
    return "://" in spec


def _has_magic(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


class FileSource(Source):
    """Files named by URIs on one or more fsspec filesystems."""

    kind = "files"

    def __init__(self, uris: Iterable[str], description: dict[str, Any]):
        uris = sorted(set(uris))
        self._items = [Item(stable_id(u), u, u) for u in uris]
        self._description = description

    def list(self) -> list[Item]:
        return list(self._items)

    def read(self, items: Sequence[Item], max_bytes: int) -> list[ReadResult]:
        return [_read_uri(item, max_bytes) for item in items]

    def describe(self) -> dict[str, Any]:
        return dict(self._description, count=len(self._items))


def _read_uri(item: Item, max_bytes: int) -> ReadResult:
    uri = item.ref
    try:
        if _is_url(uri) and not uri.startswith("file://"):
            fs, path = url_to_fs(uri)
            size = fs.size(path)
            if size is not None and size > max_bytes:
                return ReadResult(item, error=f"too-large: {size} bytes > limit {max_bytes}")
            content = fs.cat_file(path)
        else:
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            size = os.path.getsize(path)
            if size > max_bytes:
                return ReadResult(item, error=f"too-large: {size} bytes > limit {max_bytes}")
            with open(path, "rb") as fh:
                content = fh.read()
    except FileNotFoundError:
        return ReadResult(item, error="not-found: no such file (missing path or dangling link)")
    except IsADirectoryError:
        return ReadResult(item, error="read-error: is a directory")
    except PermissionError as exc:
        return ReadResult(item, error=f"read-error: permission denied ({exc.strerror})")
    except OSError as exc:
        return ReadResult(item, error=f"read-error: {type(exc).__name__}: {exc}")
    return ReadResult(item, content=content)


def _walk_local(root: str) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                paths.append(os.path.join(dirpath, name))
    return paths


def _filter(paths: list[str], include: str | None) -> list[str]:
    if not include:
        return paths
    patterns = [p.strip() for p in include.split(",") if p.strip()]
    return [p for p in paths if any(fnmatch.fnmatch(os.path.basename(p), pat) for pat in patterns)]


def _folder_source(spec: str, include: str | None) -> FileSource:
    if _is_url(spec) and not spec.startswith("file://"):
        fs, root = url_to_fs(spec)
        protocol = spec.split("://", 1)[0]
        try:
            found = fs.find(root)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot list {spec}: {exc}") from exc
        paths = [p for p in found if not os.path.basename(p).startswith(".")]
        uris = [f"{protocol}://{p.lstrip('/')}" if protocol != "memory" else f"memory://{p}" for p in paths]
    else:
        root = os.path.abspath(spec[len("file://"):] if spec.startswith("file://") else spec)
        uris = _walk_local(root)
    return FileSource(_filter(uris, include), {"kind": "folder", "root": spec, "include": include})


def _glob_source(spec: str, include: str | None) -> FileSource:
    if _is_url(spec) and not spec.startswith("file://"):
        fs, pattern = url_to_fs(spec)
        protocol = spec.split("://", 1)[0]
        try:
            found = fs.glob(pattern)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot glob {spec}: {exc}") from exc
        uris = [f"memory://{p}" if protocol == "memory" else f"{protocol}://{p.lstrip('/')}"
                for p in found if not fs.isdir(p)]
    else:
        import glob as _glob

        pattern = spec[len("file://"):] if spec.startswith("file://") else spec
        uris = [os.path.abspath(p) for p in _glob.glob(pattern, recursive=True)
                if not os.path.isdir(p)]
    if not uris:
        raise SourceError(f"the pattern {spec!r} matches no files")
    return FileSource(_filter(uris, include), {"kind": "glob", "pattern": spec, "include": include})


def _list_source(spec: str, path_column: str | None) -> FileSource:
    try:
        with fsspec.open(spec, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError as exc:
        raise SourceError(f"list file not found: {spec}") from exc
    base = os.path.dirname(spec if _is_url(spec) else os.path.abspath(spec))
    lower = spec.lower()
    if lower.endswith((".csv", ".tsv")):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if lower.endswith(".tsv") else ",")
        fields = reader.fieldnames or []
        column = path_column or next((c for c in fields if c.lower() in PATH_COLUMN_NAMES), None)
        if column is None or column not in fields:
            raise ConfigError(
                f"{spec}: no path column found among {fields}; name it with --path-column")
        entries = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    else:
        entries = [line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]

    def resolve(entry: str) -> str:
        if _is_url(entry) or os.path.isabs(entry):
            return entry
        return f"{base}/{entry}" if _is_url(base) else os.path.normpath(os.path.join(base, entry))

    return FileSource([resolve(e) for e in entries], {"kind": "list", "file": spec, "column": path_column})


class ParquetSource(Source):
    """Rows of a Parquet file or dataset holding image bytes (or paths, see `_parquet_source`)."""

    kind = "parquet"

    def __init__(self, spec: str, files: list[str], content_column: str, id_column: str | None):
        import pyarrow.parquet as pq

        self._spec = spec
        self._content_column = content_column
        self._id_column = id_column
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
        self._items = items

    def list(self) -> list[Item]:
        return list(self._items)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def _row_group(self, file: str, group: int) -> Any:
        import pyarrow.parquet as pq

        key = (file, group)
        if self._cache is None or self._cache[0] != key:
            with fsspec.open(file, "rb") as fh:
                column = pq.ParquetFile(fh).read_row_group(group, columns=[self._content_column]).column(0)
            self._cache = (key, column)
        return self._cache[1]

    def read(self, items: Sequence[Item], max_bytes: int) -> list[ReadResult]:
        results = []
        for item in items:
            file, group, offset = item.ref
            try:
                value = self._row_group(file, group)[offset].as_py()
            except OSError as exc:
                results.append(ReadResult(item, error=f"read-error: {type(exc).__name__}: {exc}"))
                continue
            if value is None:
                results.append(ReadResult(item, error="read-error: null content"))
            elif len(value) > max_bytes:
                results.append(ReadResult(item, error=f"too-large: {len(value)} bytes > limit {max_bytes}"))
            else:
                results.append(ReadResult(item, content=bytes(value)))
        return results

    def describe(self) -> dict[str, Any]:
        return {"kind": "parquet", "spec": self._spec, "content_column": self._content_column,
                "id_column": self._id_column, "count": len(self._items)}


def _parquet_files(spec: str) -> list[str]:
    fs, root = url_to_fs(spec)
    protocol = spec.split("://", 1)[0] if _is_url(spec) else None
    if fs.isdir(root):
        found = sorted(p for p in fs.find(root) if p.lower().endswith(PARQUET_SUFFIXES))
    else:
        found = [root]
    if protocol and protocol != "file":
        return [f"memory://{p}" if protocol == "memory" else f"{protocol}://{p.lstrip('/')}" for p in found]
    return found


def _parquet_source(spec: str, content_column: str | None, path_column: str | None,
                    id_column: str | None) -> Source:
    import pyarrow.parquet as pq

    files = _parquet_files(spec)
    if not files:
        raise SourceError(f"no Parquet files under {spec}")
    with fsspec.open(files[0], "rb") as fh:
        schema = pq.read_schema(fh)
    names = schema.names
    for column in (content_column, path_column, id_column):
        if column and column not in names:
            raise ConfigError(f"{spec}: no column {column!r}; columns are {names}")
    if content_column is None and path_column is None:
        import pyarrow as pa

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
    source = FileSource(uris, {"kind": "parquet-paths", "spec": spec, "path_column": path_column})
    if id_column:
        by_uri = dict(zip(uris, ids))
        source._items = [Item(by_uri[i.uri], i.uri, i.ref) for i in source._items]
    return source


def open_source(spec: str, *, include: str | None = None, content_column: str | None = None,
                path_column: str | None = None, id_column: str | None = None) -> Source:
    """Open an input spec and return its Source.

    Args:
        spec: folder, glob, list file (.txt/.lst/.csv/.tsv), Parquet file or folder, or an
            fsspec URL of any of these.
        include: comma-separated file-name patterns to keep in folders and globs ("*.jpg,*.png").
        content_column / path_column / id_column: for tables; found automatically when omitted.

    Raises:
        SourceError: the spec does not exist or cannot be listed.
        ConfigError: a table lacks the columns asked for.
    """
    spec = os.fspath(spec)
    lower = spec.lower()
    if _has_magic(spec):
        return _glob_source(spec, include)
    try:
        fs, path = url_to_fs(spec)
        exists = fs.exists(path)
        is_dir = exists and fs.isdir(path)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot reach {spec}: {exc}") from exc
    if not exists:
        raise SourceError(f"input not found: {spec}")
    if lower.endswith(PARQUET_SUFFIXES) or content_column or (is_dir and _all_parquet(fs, path)):
        return _parquet_source(spec, content_column, path_column, id_column)
    if is_dir:
        return _folder_source(spec, include)
    if lower.endswith(LIST_SUFFIXES):
        return _list_source(spec, path_column)
    return FileSource([os.path.abspath(spec) if not _is_url(spec) else spec],
                      {"kind": "file", "path": spec})


def _all_parquet(fs: Any, path: str) -> bool:
    files = [p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_"))]
    return bool(files) and all(p.lower().endswith(PARQUET_SUFFIXES) for p in files)
