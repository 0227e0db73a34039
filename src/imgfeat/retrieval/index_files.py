"""An index on disk: a folder written all at once, so a reader never sees half of one.

    INDEX/index.json  INDEX/vectors.faiss  INDEX/codes.faiss  INDEX/ids.parquet  INDEX/removed.npy

A sharded index (sharded.py) is a folder of such folders, INDEX/shard-00000/ ..., with its own
INDEX/index.json ("sharded": true, the parts and their counts); it is written the same way.

`write_index_folder` writes every file into a hidden temporary folder beside the target,
fsyncs them, then swaps the folder in with renames; a failure (full disk, kill) leaves the
previous index as it was and removes the temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import INDEX_JSON
from ..errors import OutputError, SourceError
from .faiss_kinds import faiss_module

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.faiss"
CODES_FILE = "codes.faiss"
IDS_FILE = "ids.parquet"
REMOVED_FILE = "removed.npy"
PART_PREFIX = "shard-"  # a sharded index's parts: INDEX/shard-00000/, ... (each a whole index folder)
TRAINED_FILE = "trained.faiss"  # a sharded ivf/ivfpq index's trained empty float index (new parts copy it)


@dataclass
class IndexParts:
    """What an index folder holds."""

    info: dict[str, Any]  # index.json
    float_index: Any
    binary_index: Any  # None without codes
    meta: Any  # DataFrame indexed by id
    removed: np.ndarray | None


def read_index_json(path: str | os.PathLike) -> dict[str, Any]:
    """The index.json of an index folder (a single or a sharded index).

    Raises:
        SourceError: no index.json there, or one that is not a JSON object.
    """
    info_path = os.path.join(os.fspath(path), INDEX_JSON)
    if not os.path.exists(info_path):
        raise SourceError(f"{os.fspath(path)} is not an index folder (no {INDEX_JSON}): build one with "
                          "`imgfeat index FEATURES -o INDEX`")
    try:
        with open(info_path, "rb") as fh:
            info = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{info_path} is not valid JSON ({exc}): rebuild the index") from exc
    if not isinstance(info, dict):
        raise SourceError(f"{info_path} is not an index description: rebuild the index")
    return info


def read_index_folder(path: str | os.PathLike, mmap: bool = False) -> IndexParts:
    """Read an index folder.

    Args:
        path: the folder.
        mmap: map the float index's vectors / inverted lists from the file instead of reading
            them into memory (pages come in as searches touch them, and the kernel can drop
            them again). The result must then be treated as read-only: FAISS crashes, rather
            than raises, on removing from or adding to a mapped index.

    Raises:
        SourceError: not an index folder, or one of another format version.
    """
    import pandas as pd

    faiss = faiss_module()
    path = os.fspath(path)
    info = read_index_json(path)
    if info.get("sharded"):
        raise SourceError(f"{path} is a sharded index of {len(info.get('parts') or [])} parts: imgfeat.load_index "
                          "opens it (search, serve); what needs a single index (FeatureIndex.load, dedup) takes "
                          f"the features, or one part ({path}/{PART_PREFIX}00000)")
    if info.get("format_version") != FORMAT_VERSION:
        raise SourceError(f"{path}: index format {info.get('format_version')} is not {FORMAT_VERSION}; "
                          "rebuild it with this version of imgfeat")
    binary = faiss.read_index_binary(os.path.join(path, CODES_FILE)) if info.get("code_bytes") else None
    removed_path = os.path.join(path, REMOVED_FILE)
    flags = 0
    if mmap:  # inverted lists map with IO_FLAG_MMAP; flat (and HNSW) storage with _IFC; the two don't mix
        flags = faiss.IO_FLAG_MMAP if info.get("kind") in ("ivf", "ivfpq") else faiss.IO_FLAG_MMAP_IFC
    return IndexParts(info, faiss.read_index(os.path.join(path, VECTORS_FILE), flags), binary,
                      pd.read_parquet(os.path.join(path, IDS_FILE)).set_index("id"),
                      np.load(removed_path, allow_pickle=False) if os.path.exists(removed_path) else None)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_faiss(write: Any, index: Any, path: str) -> None:
    """Write a FAISS index through a Python file, streamed.

    FAISS's own file writer reports a failed write (a full disk) only on stderr and leaves a
    truncated file; through Python, the OSError is raised and the folder is not swapped in.
    """
    faiss = faiss_module()
    with open(path, "wb") as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)
        try:
            write(index, writer)
        finally:
            del writer


def write_float_index(index: Any, path: str) -> None:
    """Write one FAISS float index file (streamed through Python, fsynced)."""
    _write_faiss(faiss_module().write_index, index, path)
    _fsync(path)


def read_float_index(path: str) -> Any:
    """Read one FAISS float index file.

    Raises:
        SourceError: missing or unreadable.
    """
    if not os.path.exists(path):
        raise SourceError(f"{path} is missing: rebuild the index")
    try:
        return faiss_module().read_index(path)
    except RuntimeError as exc:  # faiss's error for a truncated or foreign file
        raise SourceError(f"{path} cannot be read ({exc}): rebuild the index") from exc


def check_index_target(path: str | os.PathLike) -> str:
    """The absolute path an index may be written to.

    Raises:
        OutputError: `path` exists and is not an index folder (nothing is deleted).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not (os.path.isdir(path) and (
            os.path.exists(os.path.join(path, INDEX_JSON)) or not os.listdir(path))):
        raise OutputError(f"{path} exists and is not an index folder: choose another path")
    return path


def temporary_folder(path: str) -> str:
    """A new hidden folder beside `path`, to write into and then `swap_in`."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def swap_in(tmp: str, path: str) -> None:
    """Replace `path` (if there) by the finished folder `tmp` with renames; on failure the
    previous folder is put back."""
    parent = os.path.dirname(path)
    old = None
    if os.path.exists(path):
        old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old:  # the new folder could not be moved in: put the previous one back
            os.replace(old, path)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_index_json(folder: str, info: dict[str, Any]) -> None:
    """Write `folder`/index.json through a temporary file, fsynced, then renamed over the old one."""
    tmp = os.path.join(folder, f".{INDEX_JSON}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
        _fsync(tmp)
        os.replace(tmp, os.path.join(folder, INDEX_JSON))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_index_files(folder: str, parts: IndexParts) -> None:
    """Write an index's files into an existing (empty) folder, fsynced."""
    faiss = faiss_module()
    _write_faiss(faiss.write_index, parts.float_index, os.path.join(folder, VECTORS_FILE))
    if parts.binary_index is not None:
        _write_faiss(faiss.write_index_binary, parts.binary_index, os.path.join(folder, CODES_FILE))
    parts.meta.reset_index().to_parquet(os.path.join(folder, IDS_FILE), index=False, compression="zstd")
    if parts.removed is not None and len(parts.removed):
        np.save(os.path.join(folder, REMOVED_FILE), parts.removed)
    with open(os.path.join(folder, INDEX_JSON), "w") as fh:
        json.dump(parts.info, fh, indent=2, sort_keys=True)
    for name in os.listdir(folder):
        _fsync(os.path.join(folder, name))


def write_index_folder(path: str | os.PathLike, parts: IndexParts) -> None:
    """Write (or replace) an index folder atomically.

    Raises:
        OutputError: `path` exists and is not an index folder (nothing is deleted).
        OSError: the write failed; the previous folder is intact.
    """
    path = check_index_target(path)
    tmp = temporary_folder(path)
    try:
        write_index_files(tmp, parts)
        swap_in(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
