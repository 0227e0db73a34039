"""The shapes every source shares: Item, ReadResult, the Source Protocol, ListedSource, and the
SourceRequest a kind of source is opened from."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from fsspec.core import url_to_fs

from ..errors import SourceError
from ..storage import NO_RETRY, ReadFailure, Retry, classify, is_url

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


@dataclass
class SourceRequest:
    """A spec and its reading options, with what the spec names probed once."""

    spec: str
    include: str | None = None
    content_column: str | None = None
    path_column: str | None = None
    id_column: str | None = None
    table: str | None = None  # SQL sources: a table name, or
    query: str | None = None  # a SELECT
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


def has_magic(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def local_spec(spec: str) -> str | None:
    if spec.startswith("file://"):
        return spec[len("file://"):]
    return None if is_url(spec) else spec
