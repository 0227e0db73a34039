"""Sources of files: folders, globs, list files and single files, local or any fsspec URL."""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import os
from typing import Any, Iterable, Sequence

import fsspec
from fsspec.core import url_to_fs

from ..errors import ConfigError, SourceError
from ..storage import NO_RETRY, Retry, classify, is_url, read_bytes
from .base import (
    PATH_COLUMN_NAMES,
    Item,
    ListedSource,
    ReadResult,
    Source,
    SourceRequest,
    local_spec,
    read_one,
    stable_id,
)


class FileSource(ListedSource):
    """Files named by URIs on one or more fsspec filesystems (local paths included).

    Args:
        uris: the inputs (duplicates are dropped; listed sorted).
        description: what `describe()` reports (the manifest).
        ids: your own ids by URI (default: `stable_id(uri)`).

    Raises:
        SourceError: two inputs share an id.
    """

    kind = "files"

    def __init__(self, uris: Iterable[str], description: dict[str, Any], ids: dict[str, str] | None = None):
        unique = sorted(set(uris))
        items = [Item(ids[u] if ids else stable_id(u), u, u) for u in unique]
        if ids and len({i.id for i in items}) != len(items):
            raise SourceError(f"{description.get('kind', 'source')}: the id column has duplicate values")
        super().__init__(items, description)

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]:
        return [read_one(item, functools.partial(read_bytes, item.ref, max_bytes, retry)) for item in items]


def protocol_uri(protocol: str, path: str, chain: str = "") -> str:
    """The URL of `path` on `protocol`; `chain` ("::outer://...") keeps an fsspec chain."""
    return (f"memory://{path}" if protocol == "memory" else f"{protocol}://{path.lstrip('/')}") + chain


def split_chain(spec: str) -> tuple[str, str]:
    """(protocol, "::rest" or "") of "proto://path::rest": URIs built from the first link must keep
    the rest of the chain (tar://member::photos.tar is a member; tar://member alone is nothing)."""
    protocol, _, rest = spec.partition("://")
    _, sep, chain = rest.partition("::")
    return protocol, f"::{chain}" if sep else ""


def _walk_local(root: str) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                paths.append(os.path.join(dirpath, name))
    return paths


def filter_names(paths: list[str], include: str | None) -> list[str]:
    if not include:
        return paths
    patterns = [p.strip() for p in include.split(",") if p.strip()]
    return [p for p in paths if any(fnmatch.fnmatch(os.path.basename(p), pat) for pat in patterns)]


def open_folder(request: SourceRequest) -> Source:
    spec = request.spec
    local = local_spec(spec)
    if local is None:
        fs, root, _, _ = request.probe()
        try:
            found = fs.find(root)
        except Exception as exc:
            raise SourceError(f"cannot list {spec}: {classify(exc).reason}") from exc
        protocol, chain = split_chain(spec)
        uris = [protocol_uri(protocol, p, chain) for p in found if not os.path.basename(p).startswith(".")]
    else:
        uris = _walk_local(os.path.abspath(local))
    return FileSource(filter_names(uris, request.include), {"kind": "folder", "root": spec, "include": request.include})


def open_glob(request: SourceRequest) -> Source:
    spec = request.spec
    local = local_spec(spec)
    if local is None:
        fs, pattern = url_to_fs(spec)
        try:
            found = fs.glob(pattern)
        except Exception as exc:
            raise SourceError(f"cannot glob {spec}: {classify(exc).reason}") from exc
        protocol, chain = split_chain(spec)
        uris = [protocol_uri(protocol, p, chain) for p in found if not fs.isdir(p)]
    else:
        import glob as _glob

        uris = [os.path.abspath(p) for p in _glob.glob(local, recursive=True) if not os.path.isdir(p)]
    if not uris:
        raise SourceError(f"the pattern {spec!r} matches no files")
    return FileSource(filter_names(uris, request.include), {"kind": "glob", "pattern": spec, "include": request.include})


def open_list(request: SourceRequest) -> Source:
    spec = request.spec
    try:
        with fsspec.open(spec, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError as exc:
        raise SourceError(f"list file not found: {spec}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{spec} is not a UTF-8 text list ({exc})") from exc
    base = os.path.dirname(spec if is_url(spec) else os.path.abspath(spec))
    ids: list[str] | None = None
    if request.lower.endswith((".csv", ".tsv")):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if request.lower.endswith(".tsv") else ",")
        fields = reader.fieldnames or []
        column = request.path_column or next((c for c in fields if c.lower() in PATH_COLUMN_NAMES), None)
        if column is None or column not in fields:
            raise ConfigError(f"{spec}: no path column found among {fields}; name it with --path-column")
        if request.id_column and request.id_column not in fields:
            raise ConfigError(f"{spec}: no id column {request.id_column!r} among {fields}")
        rows = [row for row in reader if (row.get(column) or "").strip()]
        entries = [row[column].strip() for row in rows]
        if request.id_column:
            ids = [(row.get(request.id_column) or "").strip() for row in rows]
            if not all(ids):
                raise SourceError(f"{spec}: the id column {request.id_column!r} has empty values")
    else:
        if request.id_column:
            raise ConfigError(f"{spec} is a plain list (one path per line): it has no columns, so "
                              "--id-column cannot apply; use a .csv with a path and an id column")
        entries = [line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]

    def resolve(entry: str) -> str:
        if is_url(entry) or os.path.isabs(entry):
            return entry
        return f"{base}/{entry}" if is_url(base) else os.path.normpath(os.path.join(base, entry))

    uris = [resolve(e) for e in entries]
    by_uri = None
    if ids is not None:
        by_uri = dict(zip(uris, ids))
        if len(by_uri) != len(uris):
            raise SourceError(f"{spec}: a path is listed twice with --id-column; each input needs one id")
    return FileSource(uris, {"kind": "list", "file": spec, "column": request.path_column,
                             "id_column": request.id_column}, ids=by_uri)


def open_file(request: SourceRequest) -> Source:
    spec = request.spec
    return FileSource([spec if is_url(spec) else os.path.abspath(spec)], {"kind": "file", "path": spec})
