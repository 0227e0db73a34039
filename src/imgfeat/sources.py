"""Where images come from: folders, globs, list files, Parquet tables, any fsspec URL.

`open_source(spec)` returns a `Source`: a small picklable object that lists its inputs as
`Item`s (stable id, URI, a reference for reading) in a fixed order, and reads a batch of
them into bytes. Listing happens once, in the driver; reading happens in the workers, from
`source.reader()` (the same source without its listing, small to ship).

Kinds, tried in the order of `SOURCE_KINDS` (the first that accepts the spec opens it):
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

import copy
import csv
import fnmatch
import functools
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import fsspec
from fsspec.core import url_to_fs

from .errors import ConfigError, SourceError
from .storage import NO_RETRY, ReadFailure, Retry, classify, is_url, read_bytes

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


@runtime_checkable
class Source(Protocol):
    """What a runner needs from an input: list once, read anywhere.

    `read` never raises for one bad input: it returns a ReadResult with `error` set.
    """

    kind: str

    def list(self) -> list[Item]: ...

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]: ...

    def describe(self) -> dict[str, Any]: ...

    def reader(self) -> "Source": ...


class ListedSource:
    """Base of the sources that list their items up front; `reader()` drops the listing."""

    kind = "base"

    def __init__(self, items: list[Item], description: dict[str, Any]):
        self._items = items
        self._description = description

    def list(self) -> list[Item]:
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        return dict(self._description, kind=self._description.get("kind", self.kind), count=len(self._items))

    def reader(self) -> "ListedSource":
        reader = copy.copy(self)
        reader._items = []  # read() needs only each item's ref; the listing can be millions long
        return reader


def read_one(item: Item, read: Callable[[], bytes]) -> ReadResult:
    """Run one read; whatever it raises becomes the item's error, never the batch's."""
    try:
        return ReadResult(item, content=read())
    except ReadFailure as failure:
        return ReadResult(item, error=failure.reason)
    except Exception as exc:  # e.g. MemoryError: one input must not take the run down
        return ReadResult(item, error=classify(exc).reason)


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


# --- opening a spec -------------------------------------------------------------------------

@dataclass
class SourceRequest:
    """A spec and its reading options, with what the spec names probed once."""

    spec: str
    include: str | None = None
    content_column: str | None = None
    path_column: str | None = None
    id_column: str | None = None
    _probe: tuple[Any, str, bool, bool] | None = field(default=None, repr=False)

    @property
    def lower(self) -> str:
        return self.spec.lower()

    def probe(self) -> tuple[Any, str, bool, bool]:
        """(filesystem, path, exists, is a folder) of the spec.

        Raises:
            SourceError: the storage cannot be reached (or its fsspec package is missing).
        """
        if self._probe is None:
            try:
                fs, path = url_to_fs(self.spec)
                exists = fs.exists(path)
                self._probe = (fs, path, exists, exists and fs.isdir(path))
            except ImportError as exc:
                raise SourceError(f"cannot read {self.spec}: {exc}") from exc
            except Exception as exc:  # any store client's own error: one clear line
                raise SourceError(f"cannot reach {self.spec}: {classify(exc).reason}") from exc
        return self._probe


@dataclass(frozen=True)
class SourceKind:
    """One kind of input: whether it takes a spec, and how to open it."""

    name: str
    accepts: Callable[[SourceRequest], bool]
    open: Callable[[SourceRequest], Source]


SOURCE_KINDS: list[SourceKind] = []


def register_source(kind: SourceKind, before: str | None = None) -> SourceKind:
    """Add a kind of source; it is tried before the kind named `before` (default: last)."""
    names = [k.name for k in SOURCE_KINDS]
    SOURCE_KINDS.insert(names.index(before) if before in names else len(SOURCE_KINDS), kind)
    return kind


def _has_magic(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _protocol_uri(protocol: str, path: str) -> str:
    return f"memory://{path}" if protocol == "memory" else f"{protocol}://{path.lstrip('/')}"


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


def _local(spec: str) -> str | None:
    if spec.startswith("file://"):
        return spec[len("file://"):]
    return None if is_url(spec) else spec


def _open_folder(request: SourceRequest) -> Source:
    spec = request.spec
    local = _local(spec)
    if local is None:
        fs, root, _, _ = request.probe()
        try:
            found = fs.find(root)
        except Exception as exc:
            raise SourceError(f"cannot list {spec}: {classify(exc).reason}") from exc
        protocol = spec.split("://", 1)[0]
        uris = [_protocol_uri(protocol, p) for p in found if not os.path.basename(p).startswith(".")]
    else:
        uris = _walk_local(os.path.abspath(local))
    return FileSource(_filter(uris, request.include), {"kind": "folder", "root": spec, "include": request.include})


def _open_glob(request: SourceRequest) -> Source:
    spec = request.spec
    local = _local(spec)
    if local is None:
        fs, pattern = url_to_fs(spec)
        try:
            found = fs.glob(pattern)
        except Exception as exc:
            raise SourceError(f"cannot glob {spec}: {classify(exc).reason}") from exc
        protocol = spec.split("://", 1)[0]
        uris = [_protocol_uri(protocol, p) for p in found if not fs.isdir(p)]
    else:
        import glob as _glob

        uris = [os.path.abspath(p) for p in _glob.glob(local, recursive=True) if not os.path.isdir(p)]
    if not uris:
        raise SourceError(f"the pattern {spec!r} matches no files")
    return FileSource(_filter(uris, request.include), {"kind": "glob", "pattern": spec, "include": request.include})


def _open_list(request: SourceRequest) -> Source:
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


def _parquet_files(spec: str) -> list[str]:
    fs, root = url_to_fs(spec)
    protocol = spec.split("://", 1)[0] if is_url(spec) else None
    if fs.isdir(root):
        found = sorted(p for p in fs.find(root) if p.lower().endswith(PARQUET_SUFFIXES)
                       and not os.path.basename(p).startswith((".", "_")))
    else:
        found = [root]
    if protocol and protocol != "file":
        return [_protocol_uri(protocol, p) for p in found]
    return found


def _open_parquet(request: SourceRequest) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec, content_column, path_column, id_column = (request.spec, request.content_column,
                                                    request.path_column, request.id_column)
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
    files = [p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_"))]
    return bool(files) and all(p.lower().endswith(PARQUET_SUFFIXES) for p in files)


def _open_file(request: SourceRequest) -> Source:
    spec = request.spec
    return FileSource([spec if is_url(spec) else os.path.abspath(spec)], {"kind": "file", "path": spec})


def _is_parquet(request: SourceRequest) -> bool:
    if request.lower.endswith(PARQUET_SUFFIXES) or request.content_column:
        return True
    fs, path, _, is_dir = request.probe()
    return is_dir and _all_parquet(fs, path)


register_source(SourceKind("glob", lambda r: _has_magic(r.spec), _open_glob))
register_source(SourceKind("parquet", _is_parquet, _open_parquet))
register_source(SourceKind("folder", lambda r: r.probe()[3], _open_folder))
register_source(SourceKind("list", lambda r: r.lower.endswith(LIST_SUFFIXES), _open_list))
register_source(SourceKind("file", lambda r: True, _open_file))


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
    local = _local(spec)
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
    outs = {out, (out[0], os.path.abspath(_local(output))) if out[0] == "file" else out}
    for item in source.list():
        uri = item.uri
        local = _local(uri)
        place = ("file", local) if local is not None else _place(uri) if "#" not in uri else None
        if place is not None and any(_within(place, o) for o in outs):
            raise ConfigError(f"the output {output} holds the input {item.uri}: write features to a "
                              "folder that holds no inputs")


def open_source(spec: str | os.PathLike, *, include: str | None = None, content_column: str | None = None,
                path_column: str | None = None, id_column: str | None = None) -> Source:
    """Open an input spec and return its Source.

    Args:
        spec: folder, glob, list file (.txt/.lst/.csv/.tsv), Parquet file or folder, or an
            fsspec URL of any of these.
        include: comma-separated file-name patterns to keep in folders and globs ("*.jpg,*.png").
        content_column / path_column / id_column: for tables and CSV lists; found
            automatically when omitted (ids default to the SHA-1 of the URI).

    Raises:
        SourceError: the spec does not exist or cannot be listed, or its inputs need a
            package that is not installed.
        ConfigError: a table lacks the columns asked for, or an option does not apply.
    """
    request = SourceRequest(os.fspath(spec), include, content_column, path_column, id_column)
    if not _has_magic(request.spec) and not request.probe()[2]:
        raise SourceError(f"input not found: {request.spec}")
    kind = next(k for k in SOURCE_KINDS if k.accepts(request))
    if id_column and kind.name not in ("parquet", "list"):
        raise ConfigError(f"--id-column applies to tables (Parquet, .csv/.tsv lists); {request.spec} "
                          f"is a {kind.name}")
    source = kind.open(request)
    check_protocols(source)
    return source
