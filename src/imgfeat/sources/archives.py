"""Members of tar and zip archives, and WebDataset tar shards, local or through fsspec.

    tar://PATTERN::ARCHIVE, zip://PATTERN::ARCHIVE   the members matching PATTERN (fsspec's chain
                                                      syntax; ARCHIVE is any path or URL)
    photos.tar, photos.tgz, photos.zip               every member of one archive
    webdataset:SPEC, shards/{000..009}.tar,          WebDataset shards: one row per sample (its
    a local folder holding only .tar files           image member), id = the sample's __key__

The driver lists each archive once (tar headers with their data offsets; a zip's central
directory). A worker's `read(items)` opens each archive once per batch and reads the batch's
members in file order: a tar member is one forward seek and one read of its known size (so a
shard is streamed front to back, never re-indexed per member); a compressed tar is streamed
once per batch with tarfile's "r|*" mode; a zip member goes through `storage.read_bytes` on an
fsspec ZipFileSystem (bounded, size-checked). A member that cannot be read, is too large, or a
sample without an image is an error row; the others are unaffected.
"""

from __future__ import annotations

import itertools
import os
import re
import tarfile
import time
from typing import Any, Iterator, Sequence

import fsspec

from ..errors import ConfigError, SourceError
from ..storage import NO_RETRY, RETRYABLE, ReadFailure, Retry, classify, is_url, read_bytes
from .base import Item, ListedSource, ReadResult, Source, SourceRequest, has_magic, local_spec, read_one, stable_id
from .files import filter_names, protocol_uri

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)
WEBDATASET_PREFIX = "webdataset:"
# a sample's image member, by preference (WebDataset's extension: all after the first dot)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "bmp", "tif", "tiff", "gif")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_BRACES = re.compile(r"\{([^{}]*)\}")


def _name(member: str) -> str:
    return member[2:] if member.startswith("./") else member


def _archive_path(archive: str) -> str:
    local = local_spec(archive)
    return os.path.abspath(local) if local is not None else archive


def _is_compressed(archive: str) -> bool:
    return archive.lower().endswith(TAR_SUFFIXES[1:])


def _open_retried(archive: str, retry: Retry) -> Any:
    """An open binary file of `archive`, transient failures retried; raises ReadFailure."""
    delays = retry.delays()
    while True:
        try:
            return fsspec.open(archive, "rb").open()
        except Exception as exc:
            failure = classify(exc)
            delay = next(delays, None)
            if failure.kind not in RETRYABLE or delay is None:
                raise failure from exc
            time.sleep(delay)


def tar_members(archive: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file in a tar, in file order.

    Raises:
        SourceError: the archive is missing or not a tar.
    """
    try:
        with fsspec.open(archive, "rb") as fh:
            mode = "r|*" if _is_compressed(archive) else "r:"
            with tarfile.open(fileobj=fh, mode=mode) as tar:
                for info in tar:
                    if info.isreg():
                        yield _name(info.name), info.offset_data, info.size
    except FileNotFoundError as exc:
        raise SourceError(f"archive not found: {archive}") from exc
    except tarfile.TarError as exc:
        raise SourceError(f"{archive} is not a readable tar archive ({exc})") from exc
    except (ImportError, ValueError) as exc:  # a protocol this machine cannot read
        raise SourceError(f"cannot read {archive}: {exc}") from exc
    except OSError as exc:  # a store's client error while listing: one clear line
        raise SourceError(f"cannot read {archive}: {classify(exc).reason}") from exc


def zip_members(archive: str) -> list[tuple[str, int, int]]:
    import zipfile

    try:
        with fsspec.open(archive, "rb") as fh, zipfile.ZipFile(fh) as zf:
            return [(i.filename, -1, i.file_size) for i in zf.infolist() if not i.is_dir()]
    except FileNotFoundError as exc:
        raise SourceError(f"archive not found: {archive}") from exc
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{archive} is not a readable zip archive ({exc})") from exc
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot read {archive}: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read {archive}: {classify(exc).reason}") from exc


class ArchiveSource(ListedSource):
    """Members of archives; an item's ref is (archive, member name, data offset, size), or
    (archive, None, -1, reason) for an input known at listing to be unreadable."""

    kind = "archive"

    def read(self, items: Sequence[Item], max_bytes: int, retry: Retry = NO_RETRY) -> list[ReadResult]:
        results: dict[int, ReadResult] = {}
        order = sorted(range(len(items)), key=lambda i: (items[i].ref[0], items[i].ref[2]))
        for archive, group in itertools.groupby(order, key=lambda i: items[i].ref[0]):
            positions = list(group)
            wanted = [items[i] for i in positions]
            for position, result in zip(positions, self._read_archive(archive, wanted, max_bytes, retry)):
                results[position] = result
        return [results[i] for i in range(len(items))]

    def _read_archive(self, archive: str, items: list[Item], max_bytes: int, retry: Retry) -> list[ReadResult]:
        known = [i for i in items if i.ref[1] is not None]
        out = {i.id: ReadResult(i, error=i.ref[3]) for i in items if i.ref[1] is None}
        if known:
            try:
                fh = _open_retried(archive, retry)
            except ReadFailure as failure:
                out.update((i.id, ReadResult(i, error=f"{failure.reason} (archive {archive})")) for i in known)
            else:
                with fh:
                    if archive.lower().endswith(".zip"):
                        out.update(self._read_zip(fh, known, max_bytes, retry))
                    elif _is_compressed(archive):
                        out.update(_stream_tar(fh, known, max_bytes))
                    else:
                        out.update((i.id, read_one(i, lambda i=i: _read_span(fh, i.ref[2], i.ref[3], max_bytes)))
                                   for i in known)
        return [out[i.id] for i in items]

    @staticmethod
    def _read_zip(fh: Any, items: list[Item], max_bytes: int, retry: Retry) -> dict[str, ReadResult]:
        from fsspec.implementations.zip import ZipFileSystem

        try:
            fs = ZipFileSystem(fo=fh, skip_instance_cache=True)
        except Exception as exc:
            reason = classify(exc).reason
            return {i.id: ReadResult(i, error=reason) for i in items}
        return {i.id: read_one(i, lambda i=i: read_bytes(i.ref[1], max_bytes, retry, fs=fs)) for i in items}


def _read_span(fh: Any, offset: int, size: int, max_bytes: int) -> bytes:
    if size > max_bytes:
        raise ReadFailure("too-large", f"{size} bytes > limit {max_bytes}")
    fh.seek(offset)  # forward in file order: the batch's members are read front to back
    data = fh.read(size)
    if len(data) != size:
        raise ReadFailure("read-error", f"archive truncated ({len(data)} of {size} bytes)")
    return bytes(data)


def _stream_tar(fh: Any, items: list[Item], max_bytes: int) -> dict[str, ReadResult]:
    """Read the wanted members of a compressed tar in one pass (no seeking)."""
    wanted = {i.ref[1]: i for i in items}
    out: dict[str, ReadResult] = {}
    try:
        with tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                item = wanted.pop(_name(info.name), None)
                if item is None:
                    continue
                if info.size > max_bytes:
                    out[item.id] = ReadResult(item, error=f"too-large: {info.size} bytes > limit {max_bytes}")
                else:
                    out[item.id] = read_one(item, lambda info=info: tar.extractfile(info).read())
                if not wanted:
                    break
    except Exception as exc:
        reason = classify(exc).reason
        out.update((i.id, ReadResult(i, error=reason)) for i in wanted.values())
        wanted = {}
    out.update((i.id, ReadResult(i, error="not-found: member no longer in the archive")) for i in wanted.values())
    return out


def _members(archive: str) -> list[tuple[str, int, int]]:
    return zip_members(archive) if archive.lower().endswith(".zip") else list(tar_members(archive))


def _member_uri(archive: str, name: str) -> str:
    return f"{'zip' if archive.lower().endswith('.zip') else 'tar'}://{name}::{archive}"


def is_archive(request: SourceRequest) -> bool:
    spec = request.lower
    if spec.startswith(("tar://", "zip://")) and "::" in spec:
        return True
    return not has_magic(spec) and "::" not in spec and spec.endswith(ARCHIVE_SUFFIXES)


def open_archive(request: SourceRequest) -> Source:
    """Members of one tar or zip: `tar://PATTERN::ARCHIVE` (fsspec glob) or the archive itself."""
    spec = request.spec
    if spec.lower().startswith(("tar://", "zip://")):
        protocol, rest = spec.split("://", 1)
        pattern, archive = rest.split("::", 1)
        archive = _archive_path(archive)
        if archive.lower().endswith(".zip") != (protocol.lower() == "zip"):
            raise ConfigError(f"{spec}: a {protocol}:// chain needs a .{protocol.lower()} archive")
        matched = None
        if pattern.strip("/") not in ("", "**", "*"):
            from fsspec.core import url_to_fs

            try:
                fs, path = url_to_fs(spec)
                matched = {p.strip("/") for p in fs.glob(path)} if has_magic(path) else {path.strip("/")}
            except FileNotFoundError as exc:
                raise SourceError(f"archive not found: {archive}") from exc
            except (ImportError, ValueError) as exc:
                raise SourceError(f"cannot read {spec}: {exc}") from exc
    else:
        archive, pattern, matched = _archive_path(spec), "**", None
    members = [m for m in _members(archive) if matched is None or m[0].strip("/") in matched]
    names = set(filter_names([m[0] for m in members], request.include))
    items = [Item(stable_id(uri), uri, (archive, name, offset, size))
             for name, offset, size in members if name in names
             for uri in [_member_uri(archive, name)] if not os.path.basename(name).startswith(".")]
    if len({i.uri for i in items}) != len(items):
        raise SourceError(f"{archive}: a member name appears twice; its rows would share an id")
    if not items:
        raise SourceError(f"{spec}: no members match")
    return ArchiveSource(items, {"kind": "archive", "archive": archive, "pattern": pattern,
                                 "include": request.include})


# --- WebDataset ---------------------------------------------------------------------------

def expand_braces(spec: str) -> list[str]:
    """WebDataset's shard notation: "a-{000..009}.tar" -> 10 names; "{x,y}" -> alternatives."""
    match = _BRACES.search(spec)
    if match is None:
        return [spec]
    body, head, tail = match.group(1), spec[:match.start()], spec[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def _is_tar_folder(request: SourceRequest) -> bool:
    """A local folder whose top level holds only .tar files (a remote folder is not looked into:
    listing an object-store prefix costs a full listing; say webdataset:URL there)."""
    if local_spec(request.spec) is None:
        return False
    try:
        fs, path, _, is_dir = request.probe()
    except SourceError:  # not for this kind to report: a later kind (or the registry) will
        return False
    if not is_dir:
        return False
    # one level only (shards lie side by side): a photo folder must not be walked twice
    entries = [e for e in fs.ls(path, detail=True)
               if not os.path.basename(e["name"].rstrip("/")).startswith((".", "_"))]
    return bool(entries) and all(e["type"] == "file" and e["name"].lower().endswith(TAR_SUFFIXES) for e in entries)


def is_webdataset(request: SourceRequest) -> bool:
    if request.lower.startswith(WEBDATASET_PREFIX):
        return True
    if _BRACES.search(request.spec) and request.lower.endswith(TAR_SUFFIXES):
        return True
    return not has_magic(request.spec) and "::" not in request.spec and _is_tar_folder(request)


def shard_list(spec: str) -> list[str]:
    """The shard files a WebDataset spec names (braces, globs, folders, one file), in order.

    Raises:
        SourceError: a named shard does not exist, or nothing matches.
    """
    from fsspec.core import url_to_fs

    shards: list[str] = []
    for name in expand_braces(spec):
        try:
            fs, path = url_to_fs(name)
        except (ImportError, ValueError) as exc:  # a protocol this machine cannot read
            raise SourceError(f"cannot read {name}: {exc}") from exc
        protocol = name.split("://", 1)[0] if is_url(name) else "file"

        def uri(p: str) -> str:
            return p if protocol == "file" else protocol_uri(protocol, p)

        if has_magic(path):
            shards += [uri(p) for p in sorted(fs.glob(path)) if p.lower().endswith(TAR_SUFFIXES)]
        elif fs.isdir(path):
            shards += [uri(p) for p in sorted(fs.find(path)) if p.lower().endswith(TAR_SUFFIXES)
                       and not os.path.basename(p).startswith((".", "_"))]
        elif fs.exists(path):
            shards.append(uri(path))
        else:
            raise SourceError(f"WebDataset shard not found: {name}")
    if not shards:
        raise SourceError(f"{spec}: no .tar shards found")
    return shards


def samples(shard: str) -> Iterator[tuple[str, dict[str, tuple[str, int, int]]]]:
    """(key, {extension: (member, offset, size)}) of each sample of a shard, in file order."""
    key, members = None, {}
    for name, offset, size in tar_members(shard):
        match = _KEY_EXT.match(name)
        if match is None or os.path.basename(name).startswith("."):
            continue
        if match.group(1) != key:
            if key is not None:
                yield key, members
            key, members = match.group(1), {}
        members[match.group(2)] = (name, offset, size)
    if key is not None:
        yield key, members


def _image_member(members: dict[str, tuple[str, int, int]]) -> tuple[str, int, int] | None:
    lower = {ext.lower(): value for ext, value in members.items()}
    return next((lower[ext] for ext in IMAGE_EXTENSIONS if ext in lower), None)


def open_webdataset(request: SourceRequest) -> Source:
    """WebDataset shards: one item per sample, its image member (the first of IMAGE_EXTENSIONS
    it has); a sample without an image is an error row. Ids: the sample key (`__key__`), or
    "<shard file name>/<key>" with id_column "__shard__/__key__" when keys repeat across shards."""
    spec = request.spec[len(WEBDATASET_PREFIX):] if request.lower.startswith(WEBDATASET_PREFIX) else request.spec
    id_rule = request.id_column or "__key__"
    if id_rule not in ("__key__", "__shard__/__key__"):
        raise ConfigError(f"WebDataset ids are '__key__' (default) or '__shard__/__key__', not {id_rule!r}")
    items = []
    for shard in (_archive_path(s) for s in shard_list(spec)):
        shard_name = os.path.basename(shard).split(".", 1)[0]
        for key, members in samples(shard):
            item_id = key if id_rule == "__key__" else f"{shard_name}/{key}"
            image = _image_member(members)
            if image is None:
                uri = f"tar://{key}::{shard}"
                reason = f"read-error: sample has no image member (has {', '.join(sorted(members))})"
                items.append(Item(item_id, uri, (shard, None, -1, reason)))
            else:
                items.append(Item(item_id, _member_uri(shard, image[0]), (shard, *image)))
    if len({i.id for i in items}) != len(items):
        raise SourceError(f"{spec}: sample keys repeat (across shards?); use --id-column '__shard__/__key__'")
    if not items:
        raise SourceError(f"{spec}: the shards hold no samples")
    description = {"kind": "webdataset", "shards": spec, "id": id_rule}
    local = local_spec(spec)
    if local is not None and os.path.isdir(local):
        description["root"] = spec  # an output inside the shards' folder is refused (check_output_apart)
    return ArchiveSource(items, description)
