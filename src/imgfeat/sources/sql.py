"""Rows of a SQL table or query through SQLAlchemy: images as BLOB columns, or as paths/URLs.

    imgfeat extract sqlite:///shop.sqlite --table products --content-column image --id-column sku
    imgfeat extract postgresql+psycopg://user@host/db --query "SELECT sku, url FROM products" \\
        --path-column url --id-column sku

Listing runs in the driver and reads only the id column (`ORDER BY` id, streamed), so the
listing order is stable across runs and resuming cuts the same shards. Reading runs in the
workers: one `SELECT id, length(blob), blob ... WHERE id IN (...)` per batch, and a blob longer
than the byte limit is never fetched (the database returns NULL for it). The reader holds only
the URL and names; each process opens its own engine on first use (engines must not cross a
fork). With a path column the source is a FileSource of those paths (read like any file).

SQLAlchemy (the `sql` extra) serves every database it has a dialect for with one code path;
the stdlib sqlite3 alone would need a second one for every other server.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Sequence

from ..errors import ConfigError, MissingExtra, SourceError
from ..storage import NO_RETRY, Retry
from .base import PATH_COLUMN_NAMES, Item, ListedSource, ReadResult, Source, SourceRequest
from .files import FileSource

SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "duckdb",
               "snowflake", "clickhouse", "trino", "redshift", "cockroachdb")
_ENGINES: dict[tuple[int, str], Any] = {}
_LOCK = threading.Lock()


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError as exc:
        raise MissingExtra("SQL sources need SQLAlchemy: pip install 'imgfeat[sql]'") from exc
    return sqlalchemy


def engine(url: str) -> Any:
    """This process's engine for `url` (created on first use; a forked worker makes its own)."""
    key = (os.getpid(), url)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = _sqlalchemy().create_engine(url)
        return _ENGINES[key]


@atexit.register
def dispose_engines() -> None:
    """Close this process's pooled database connections (at exit, or before a server stops)."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for each in engines:
        each.dispose()


def is_sql(request: SourceRequest) -> bool:
    scheme = request.lower.split("://", 1)[0] if "://" in request.lower else ""
    return scheme.split("+", 1)[0] in SQL_SCHEMES or bool(request.table or request.query)


def _relation(sa: Any, table: str | None, query: str | None, columns: Sequence[str]) -> Any:
    """The table or the query as a selectable with `columns` (lightweight: no reflection)."""
    if query:
        return sa.text(query).columns(*(sa.column(c) for c in columns)).subquery("imgfeat_query")
    schema, _, name = table.rpartition(".")
    return sa.table(name, *(sa.column(c) for c in columns), schema=schema or None)


def safe_url(url: str) -> str:
    """The URL with its password masked (for the manifest and error messages)."""
    try:
        return _sqlalchemy().engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


class SqlSource(ListedSource):
    """Image bytes in a BLOB column; an item's ref is the row's id value (as the database has it)."""

    kind = "sql"

    def __init__(self, url: str, table: str | None, query: str | None, id_column: str, content_column: str,
                 items: list[Item], description: dict[str, Any]):
        self.url, self.table, self.query = url, table, query
        self.id_column, self.content_column = id_column, content_column
        super().__init__(items, description)

    def _fetch(self, ids: list[Any], max_bytes: int) -> dict[Any, tuple[int | None, bytes | None]]:
        sa = _sqlalchemy()
        rel = _relation(sa, self.table, self.query, (self.id_column, self.content_column))
        key, blob = rel.c[self.id_column], rel.c[self.content_column]
        size = sa.func.length(blob)
        stmt = sa.select(key, size, sa.case((size <= max_bytes, blob), else_=sa.null())).where(
            key.in_(sa.bindparam("ids", expanding=True)))
        with engine(self.url).connect() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(stmt, {"ids": ids})}

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]:
        delays = retry.delays()
        while True:
            try:
                found = self._fetch([i.ref for i in items], max_bytes)
                break
            except Exception as exc:  # the whole batch failed: each row says why
                transient = type(exc).__name__ in ("OperationalError", "InterfaceError", "DisconnectionError")
                delay = next(delays, None)
                if transient and delay is not None:
                    time.sleep(delay)
                    continue
                kind = "unreachable" if transient else "read-error"
                reason = f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                return [ReadResult(i, error=reason) for i in items]
        results = []
        for item in items:
            size, content = found.get(item.ref, (-1, None))
            if size == -1:
                results.append(ReadResult(item, error="not-found: the row is gone"))
            elif size is None:
                results.append(ReadResult(item, error="read-error: null content"))
            elif size > max_bytes or content is None:
                results.append(ReadResult(item, error=f"too-large: {size} bytes > limit {max_bytes}"))
            else:
                results.append(ReadResult(item, content=bytes(content)))
        return results


class SqlPathSource(FileSource):
    """Paths or URLs from a column; a row whose path is NULL is an error row (listed last)."""

    kind = "sql-paths"

    def __init__(self, uris: list[str], description: dict[str, Any], ids: dict[str, str], missing: list[Item]):
        super().__init__(uris, description, ids=ids)
        self._items = self._items + missing

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]:
        return [ReadResult(i, error="read-error: null path") if i.ref is None else super(SqlPathSource, self).read(
            [i], max_bytes, retry)[0] for i in items]


def _python_type(column_type: Any) -> Any:
    try:
        return column_type.python_type
    except NotImplementedError:
        return None


def _columns(sa: Any, url: str, request: SourceRequest) -> tuple[list[str], list[str], list[str]]:
    """(column names, binary columns, primary key) of the table or query."""
    if request.query:
        with engine(url).connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM ({request.query}) AS imgfeat_probe WHERE 1 = 0"))
            return list(result.keys()), [], []
    inspector = sa.inspect(engine(url))
    schema, _, name = request.table.rpartition(".")
    try:
        columns = inspector.get_columns(name, schema=schema or None)
    except sa.exc.NoSuchTableError as exc:
        raise SourceError(f"{safe_url(url)}: no table {request.table!r}") from exc
    binary = [c["name"] for c in columns if _python_type(c["type"]) is bytes]
    primary = inspector.get_pk_constraint(name, schema=schema or None).get("constrained_columns") or []
    return [c["name"] for c in columns], binary, primary


def open_sql(request: SourceRequest) -> Source:
    """A SQL table (`table`) or query (`query`) at a SQLAlchemy URL (the spec)."""
    sa = _sqlalchemy()
    url = request.spec
    where = safe_url(url)
    if bool(request.table) == bool(request.query):
        raise ConfigError(f"{where}: name the rows with exactly one of --table or --query")
    if "://" not in url:
        raise ConfigError(f"--table/--query need a database URL (sqlite:///file.db, postgresql+psycopg://...), "
                          f"not {url!r}")
    try:
        names, binary, primary = _columns(sa, url, request)
    except (SourceError, ConfigError):
        raise
    except Exception as exc:
        raise SourceError(f"cannot read {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    id_column = request.id_column or (primary[0] if len(primary) == 1 else None)
    if id_column is None:
        raise ConfigError(f"{where}: name the id column with --id-column (a unique key; it orders the rows)")
    content, path = request.content_column, request.path_column
    if not content and not path:
        paths = [n for n in names if n.lower() in PATH_COLUMN_NAMES]
        content, path = (binary[0], None) if binary else (None, paths[0] if paths else None)
        if not content and not path:
            raise ConfigError(f"{where}: found no binary column and no path column among {names}; "
                              "name one with --content-column or --path-column")
    for column in (id_column, content, path):
        if column and column not in names:
            raise ConfigError(f"{where}: no column {column!r}; columns are {names}")
    listed = [c for c in (id_column, path) if c]
    rel = _relation(sa, request.table, request.query, listed)
    stmt = sa.select(*(rel.c[c] for c in listed)).order_by(rel.c[id_column])
    try:
        with engine(url).connect() as conn:
            rows = conn.execution_options(stream_results=True).execute(stmt).all()
    except Exception as exc:
        raise SourceError(f"cannot list {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if any(r[0] is None for r in rows):
        raise SourceError(f"{where}: the id column {id_column!r} has NULL values")
    ids = [str(r[0]) for r in rows]
    if len(set(ids)) != len(ids):
        raise SourceError(f"{where}: the id column {id_column!r} has duplicate values")
    description = {"kind": "sql", "url": where, "table": request.table, "query": request.query,
                   "id_column": id_column, "content_column": content, "path_column": path}
    if path:
        uris = [str(r[1]) for r in rows if r[1] is not None]
        by_uri = dict(zip(uris, (str(r[0]) for r in rows if r[1] is not None)))
        if len(by_uri) != len(uris):
            raise SourceError(f"{where}: a path appears in two rows; each input needs one id")
        missing = [Item(i, f"null path: {request.table or 'query'}/{id_column}={i}", None)
                   for i, r in zip(ids, rows) if r[1] is None]
        return SqlPathSource(uris, dict(description, kind="sql-paths"), by_uri, missing)
    items = [Item(i, f"{where}#{request.table or 'query'}/{id_column}={i}", r[0]) for i, r in zip(ids, rows)]
    return SqlSource(url, request.table, request.query, id_column, content, items, description)


__all__ = ["SqlPathSource", "SqlSource", "dispose_engines", "is_sql", "open_sql", "safe_url"]
