"""Where images come from: folders, globs, list files, Parquet tables, any fsspec URL.

`open_source(spec)` returns a `Source`: a small picklable object that lists its inputs as
`Item`s (stable id, URI, a reference for reading) in a fixed order, and reads a batch of
them into bytes. Listing happens once, in the driver; reading happens in the workers, from
`source.reader()` (the same source without its listing, small to ship).

Kinds, tried in the order of `SOURCE_KINDS` (the first that accepts the spec opens it):
    sql        sqlite:///shop.db, postgresql+psycopg://host/db with --table or --query (sql.py)
    webdataset webdataset:SPEC, shards/{000..009}.tar, a local folder of only .tar (archives.py)
    archive    tar://PATTERN::photos.tar, zip://PATTERN::s3://b/a.zip, photos.tar, photos.zip
    glob       photos/**/*.jpg, memory://imgs/*.png
    parquet    a Parquet file or a folder of them, with a binary content column or a path column
    folder     recursive, local or fsspec URL: photos/, s3://bucket/photos/
    list       .txt/.lst one path per line; .csv/.tsv with a path column (and --id-column)
    file       one image

A new kind is a `SourceKind` (name, accepts(request), open(request)) added with
`register_source`; reading bytes goes through `storage.read_bytes`, so every kind refuses
non-regular files, caps the bytes read and retries transient network failures alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import fsspec

from ..errors import ConfigError, SourceError
from ..storage import is_url
from .base import (
    LIST_SUFFIXES,
    PARQUET_SUFFIXES,
    PATH_COLUMN_NAMES,
    Item,
    ListedSource,
    ReadResult,
    Source,
    SourceRequest,
    has_magic,
    local_spec,
    read_one,
    stable_id,
)
from .archives import ArchiveSource, is_archive, is_webdataset, open_archive, open_webdataset
from .files import FileSource, open_file, open_folder, open_glob, open_list
from .sql import SqlSource, is_sql, open_sql
from .tables import ParquetSource, is_parquet, open_parquet


@dataclass(frozen=True)
class SourceKind:
    """One kind of input: whether it takes a spec, and how to open it."""

    name: str
    accepts: Callable[[SourceRequest], bool]
    open: Callable[[SourceRequest], Source]
    must_exist: bool = True  # the spec names a file or folder (checked before opening)


SOURCE_KINDS: list[SourceKind] = []


def register_source(kind: SourceKind, before: str | None = None) -> SourceKind:
    """Add a kind of source; it is tried before the kind named `before` (default: last)."""
    names = [k.name for k in SOURCE_KINDS]
    SOURCE_KINDS.insert(names.index(before) if before in names else len(SOURCE_KINDS), kind)
    return kind


register_source(SourceKind("sql", is_sql, open_sql, must_exist=False))


register_source(SourceKind("webdataset", is_webdataset, open_webdataset, must_exist=False))


register_source(SourceKind("archive", is_archive, open_archive, must_exist=False))


register_source(SourceKind("glob", lambda r: has_magic(r.spec), open_glob, must_exist=False))


register_source(SourceKind("parquet", is_parquet, open_parquet))


register_source(SourceKind("folder", lambda r: r.probe()[3], open_folder))


register_source(SourceKind("list", lambda r: r.lower.endswith(LIST_SUFFIXES), open_list))


register_source(SourceKind("file", lambda r: True, open_file))


def check_protocols(source: Source) -> None:
    """Fail before the run when some inputs need an fsspec protocol this machine cannot use.

    Raises:
        SourceError: an input's protocol is unknown, or its package (s3fs, gcsfs, aiohttp...)
            is not installed; the message names what to install.
    """
    protocols: dict[str, int] = {}
    for item in source.list():
        uri = item.uri
        if is_url(uri) and not uri.startswith("file://"):
            protocol = uri.split("://", 1)[0].split("::")[-1]
            protocols[protocol] = protocols.get(protocol, 0) + 1
    for protocol, count in sorted(protocols.items()):
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise SourceError(f"{count} input(s) are {protocol}:// URLs, which this machine cannot read: "
                              f"{exc}") from exc


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _place(spec: str) -> tuple[str, str] | None:
    """(protocol, absolute path) to compare locations by; None for chained URLs."""
    local = local_spec(spec)
    if local is not None:
        return "file", _real(local)
    protocol, _, rest = spec.partition("://")
    if "::" in spec or not rest:
        return None
    return protocol, "/" + rest.strip("/")


def _within(inner: tuple[str, str], outer: tuple[str, str]) -> bool:
    return inner[0] == outer[0] and (inner[1] == outer[1] or inner[1].startswith(outer[1].rstrip("/") + "/"))


def check_output_apart(source: Source, output: str) -> None:
    """Refuse an output folder that equals, contains or lies inside the source's inputs.

    Writing features into the photo folder would mix them with the inputs (the next run lists
    them), and `--overwrite` there would be a step from deleting photos. Local paths and URLs
    of one protocol (s3://bucket/photos vs s3://bucket/photos/features) alike.

    Raises:
        ConfigError: the output overlaps the source.
    """
    out = _place(output)
    if out is None:
        return
    root = source.describe().get("root")
    root_place = _place(root) if isinstance(root, str) else None
    if root_place is not None and (_within(out, root_place) or _within(root_place, out)):
        raise ConfigError(f"the output {output} overlaps the input folder {root}: write features "
                          "to a folder outside the photos (e.g. beside them)")
    # items are absolute paths or URLs; a realpath per item would cost a syscall each
    outs = {out, (out[0], os.path.abspath(local_spec(output))) if out[0] == "file" else out}
    for item in source.list():
        uri = item.uri
        local = local_spec(uri)
        place = ("file", local) if local is not None else _place(uri) if "#" not in uri else None
        if place is not None and any(_within(place, o) for o in outs):
            raise ConfigError(f"the output {output} holds the input {item.uri}: write features to a "
                              "folder that holds no inputs")


def open_source(spec: str | os.PathLike, *, include: str | None = None, content_column: str | None = None,
                path_column: str | None = None, id_column: str | None = None, table: str | None = None,
                query: str | None = None) -> Source:
    """Open an input spec and return its Source.

    Args:
        spec: folder, glob, list file (.txt/.lst/.csv/.tsv), Parquet file or folder, or an
            fsspec URL of any of these.
        include: comma-separated file-name patterns to keep in folders and globs ("*.jpg,*.png").
        content_column / path_column / id_column: for tables and CSV lists; found
            automatically when omitted (ids default to the SHA-1 of the URI). For WebDataset
            shards id_column is "__key__" (default) or "__shard__/__key__".
        table / query: for a SQL database URL (sqlite:///x.db, postgresql+psycopg://...): the
            table, or a SELECT, to read rows from.

    Raises:
        SourceError: the spec does not exist or cannot be listed, or its inputs need a
            package that is not installed.
        ConfigError: a table lacks the columns asked for, or an option does not apply.
    """
    request = SourceRequest(os.fspath(spec), include, content_column, path_column, id_column, table, query)
    kind = next(k for k in SOURCE_KINDS if k.accepts(request))
    if kind.must_exist and not has_magic(request.spec) and not request.probe()[2]:
        raise SourceError(f"input not found: {request.spec}")
    if id_column and kind.name not in ("parquet", "list", "sql", "webdataset"):
        raise ConfigError(f"--id-column applies to tables (Parquet, .csv/.tsv lists, SQL) and WebDataset; "
                          f"{request.spec} is a {kind.name}")
    source = kind.open(request)
    if isinstance(source, FileSource):  # its URIs are read through fsspec
        check_protocols(source)
    return source


__all__ = [
    "LIST_SUFFIXES", "PARQUET_SUFFIXES", "PATH_COLUMN_NAMES", "SOURCE_KINDS", "ArchiveSource", "FileSource", "Item",
    "ListedSource", "SqlSource",
    "ParquetSource", "ReadResult", "Source", "SourceKind", "SourceRequest", "check_output_apart", "check_protocols",
    "open_source", "read_one", "register_source", "stable_id",
]
