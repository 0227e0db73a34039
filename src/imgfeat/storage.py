"""Bytes in and files out, wherever fsspec reaches: the one place imgfeat reads and writes.

    read_bytes(uri, max_bytes)       -> bytes, or raises ReadFailure(kind, detail)
    atomic_write(target, data)       bytes or a writer function -> temp name, fsync, rename
    atomic_local_path(target)        a temporary path beside `target` for libraries that want a path

Reading refuses what is not a regular file (a FIFO would block forever, /dev/zero never ends)
by `fstat` after opening, and never reads more than `max_bytes + 1` bytes. Failures carry a
kind that becomes the row's error: not-found, too-large, read-error, unreachable, timeout;
the last two are transient and retried with exponential backoff (`Retry`).

Writing never leaves a half-written file under the final name: data goes to a hidden
temporary name in the same folder, is flushed to disk (fsync) and renamed over the target;
a failure removes the temporary file and leaves any previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from fsspec.core import url_to_fs

RETRYABLE = ("unreachable", "timeout")


class ReadFailure(Exception):
    """Why the bytes of one input could not be had: becomes that input's error row."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Retry:
    """How often a transient read failure (unreachable, timeout) is retried.

    Args:
        attempts: tries in all (1: no retry).
        wait: seconds before the first retry; doubled each time, at most `max_wait`.
    """

    attempts: int = 3
    wait: float = 0.5
    max_wait: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.wait
        for _ in range(max(0, self.attempts - 1)):
            yield min(delay, self.max_wait)
            delay *= 2


NO_RETRY = Retry(attempts=1)


def is_url(spec: str) -> bool:
    """True for "scheme://..." (file:// included)."""
    return "://" in spec


def local_path(uri: str) -> str | None:
    """The local path of a plain path or file:// URI; None for any other URL."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if is_url(uri) else uri


def read_bytes(uri: str, max_bytes: int, retry: Retry = NO_RETRY, fs: Any = None) -> bytes:
    """The bytes of one file or object, at most `max_bytes` of them.

    Args:
        uri: a local path, file:// URI or any fsspec URL (s3://, https://, memory://, chains).
        max_bytes: larger inputs are refused (too-large) after reading at most one byte more.
        retry: retries of transient failures (unreachable, timeout).
        fs: an fsspec filesystem to read `uri` (a path on it) with, instead of resolving it.

    Raises:
        ReadFailure: kind not-found, too-large, read-error, unreachable or timeout.
    """
    delays = retry.delays()
    while True:
        try:
            path = None if fs is not None else local_path(uri)
            return _read_local(path, max_bytes) if path is not None else _read_remote(uri, max_bytes, fs)
        except ReadFailure as failure:
            if failure.kind not in RETRYABLE:
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            time.sleep(delay)


def _read_local(path: str, max_bytes: int) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_failure(exc) from exc
    with os.fdopen(fd, "rb", buffering=0) as fh:
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ReadFailure("read-error", "is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise ReadFailure("read-error", f"not a regular file ({_file_type(info.st_mode)})")
            if info.st_size > max_bytes:
                raise ReadFailure("too-large", f"{info.st_size} bytes > limit {max_bytes}")
            os.set_blocking(fd, True)
            content = _read_at_most(fh, max_bytes + 1)
        except OSError as exc:
            raise _os_failure(exc) from exc
    if len(content) > max_bytes:
        raise ReadFailure("too-large", f"more than {max_bytes} bytes (the file grew while read)")
    return content


def _read_at_most(fh: BinaryIO, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = fh.read(min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _read_remote(uri: str, max_bytes: int, fs: Any = None) -> bytes:
    try:
        if fs is None:
            fs, path = url_to_fs(uri)
        else:
            path = uri
        info = fs.info(path)
        if info.get("type") not in (None, "file"):
            raise ReadFailure("read-error", f"not a file ({info.get('type')})")
        size = info.get("size")
        if size is not None and size > max_bytes:
            raise ReadFailure("too-large", f"{size} bytes > limit {max_bytes}")
        with fs.open(path, "rb") as fh:
            content = fh.read(max_bytes + 1)
    except ReadFailure:
        raise
    except ImportError as exc:
        raise ReadFailure("read-error", f"reading {uri.split('://', 1)[0]}:// needs a package that is not "
                                        f"installed ({exc})") from exc
    except Exception as exc:  # a remote store's client raises its own types: classify them all
        raise classify(exc) from exc
    if len(content) > max_bytes:
        raise ReadFailure("too-large", f"more than {max_bytes} bytes")
    return bytes(content)


def _os_failure(exc: OSError) -> ReadFailure:
    if isinstance(exc, FileNotFoundError):
        return ReadFailure("not-found", "no such file (missing path or dangling link)")
    if isinstance(exc, IsADirectoryError):
        return ReadFailure("read-error", "is a directory")
    if isinstance(exc, PermissionError):
        return ReadFailure("read-error", f"permission denied ({exc.strerror})")
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return ReadFailure("timeout", str(exc) or "timed out")
    if isinstance(exc, ConnectionError) or exc.errno in (errno.ECONNREFUSED, errno.ENETUNREACH,
                                                          errno.EHOSTUNREACH, errno.ECONNRESET):
        return ReadFailure("unreachable", str(exc) or type(exc).__name__)
    return ReadFailure("read-error", f"{type(exc).__name__}: {exc}")


def classify(exc: BaseException) -> ReadFailure:
    """The ReadFailure an exception raised while reading one input stands for.

    Network clients (aiohttp, botocore, gcsfs, ...) raise their own types; they are told apart
    by class name so none of them has to be installed: "Timeout" -> timeout; "Connect",
    "Endpoint", "Unreachable", "Network" or an HTTP 5xx -> unreachable (both retried); the rest
    -> read-error.
    """
    if isinstance(exc, ReadFailure):
        return exc
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and cause is not exc:
        # fsspec's HTTP client turns a failed connection into FileNotFoundError(url) from it
        underlying = classify(cause)
        if underlying.kind in RETRYABLE:
            return underlying
    names = " ".join(cls.__name__ for cls in type(exc).__mro__)
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    detail = f"{type(exc).__name__}: {exc}"
    if "Timeout" in names:
        return ReadFailure("timeout", detail)
    if isinstance(status, int) and 500 <= status < 600:
        return ReadFailure("unreachable", f"server error {status}: {exc}")
    if isinstance(status, int) and status == 404:
        return ReadFailure("not-found", detail)
    if isinstance(exc, OSError) and not any(k in names for k in ("Connect", "Endpoint")):
        return _os_failure(exc)
    if any(k in names for k in ("Connect", "Endpoint", "Unreachable", "Network")):
        return ReadFailure("unreachable", detail)
    return ReadFailure("read-error", detail)


def check_writable_location(output: str) -> None:
    """Fail before a run when `output` names a store this machine cannot use.

    Raises:
        OutputError: the URL's protocol is unknown, its package (s3fs, gcsfs, adlfs...) is not
            installed, or its client cannot be built (e.g. bad options); the message says what
            to install.
    """
    from .errors import OutputError

    if not is_url(output) or output.startswith("file://"):
        return
    protocol = output.split("://", 1)[0].split("::")[0]
    try:
        url_to_fs(output)
    except ImportError as exc:
        raise OutputError(f"writing {protocol}:// outputs needs a package that is not installed: {exc} "
                          f"(e.g. pip install s3fs for s3://, gcsfs for gs://)") from exc
    except ValueError as exc:
        raise OutputError(f"cannot write to {output}: {exc}") from exc


# --- writing ------------------------------------------------------------------------------

def _temporary_name(path: str, sep: str = "/") -> str:
    folder, _, name = path.rpartition(sep)
    hidden = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return f"{folder}{sep}{hidden}" if folder else hidden


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(target: str, data: bytes | Callable[[BinaryIO], None], fs: Any = None) -> None:
    """Write `target` all at once: a temporary file beside it, fsync, rename over it.

    Args:
        target: a local path or fsspec URL (or a path on `fs`).
        data: the bytes, or a function that writes them to the open binary file.
        fs: the fsspec filesystem of `target`, when already known.

    Raises:
        OSError: the write failed (full disk, read-only, permissions); nothing was left behind.
    """
    if fs is None:
        path = local_path(target)
        if path is None:
            fs, target = url_to_fs(target)
    else:
        path = target if _is_local_fs(fs) else None
    if path is not None:
        with atomic_local_path(path) as tmp, open(tmp, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
        return
    tmp = _temporary_name(target)
    try:
        with fs.open(tmp, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
        fs.mv(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def _is_local_fs(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


@contextlib.contextmanager
def atomic_local_path(target: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `target`; on success it is fsynced and renamed to `target`.

    For libraries that write to a path themselves (Parquet, FAISS, numpy). On an exception the
    temporary file is removed and `target` is untouched.
    """
    target = os.path.abspath(os.fspath(target))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary_name(target, os.sep)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-[0-9A-Za-z]+$")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_write's temporary names (".NAME.tmp-1a2b3c4d")."""
    return _TEMPORARY.match(name) is not None


def temporary_target(name: str) -> str | None:
    """The name a temporary file was to be renamed to, or None if `name` is not temporary."""
    match = _TEMPORARY.match(name)
    return match.group("target") if match else None


__all__ = ["NO_RETRY", "RETRYABLE", "ReadFailure", "Retry", "atomic_local_path", "atomic_write",
           "classify", "is_temporary", "is_url", "local_path", "read_bytes", "temporary_target"]


# --- imgfeat's own files ---------------------------------------------------------------------

def imgfeat_home() -> Path:
    """imgfeat's cache root: $IMGFEAT_HOME, default $XDG_CACHE_HOME/imgfeat (~/.cache/imgfeat)."""
    root = os.environ.get("IMGFEAT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgfeat")
    return Path(root)


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file, first `length` hex digits: the model fingerprint in the manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
