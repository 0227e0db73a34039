"""An index on disk: a folder written all at once, so a reader never sees half of one.

    INDEX/index.json  INDEX/vectors.faiss  INDEX/codes.faiss  INDEX/ids.parquet  INDEX/removed.npy

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


@dataclass
class IndexParts:
    """What an index folder holds."""

    info: dict[str, Any]  # index.json
    float_index: Any
    binary_index: Any  # None without codes
    meta: Any  # DataFrame indexed by id
    removed: np.ndarray | None


def read_index_folder(path: str | os.PathLike) -> IndexParts:
    """Read an index folder.

    Raises:
        SourceError: not an index folder, or one of another format version.
    """
    import pandas as pd

    faiss = faiss_module()
    path = os.fspath(path)
    info_path = os.path.join(path, INDEX_JSON)
    if not os.path.exists(info_path):
        raise SourceError(f"{path} is not an index folder (no {INDEX_JSON}): build one with "
                          "`imgfeat index FEATURES -o INDEX`")
    with open(info_path) as fh:
        info = json.load(fh)
    if info.get("format_version") != FORMAT_VERSION:
        raise SourceError(f"{path}: index format {info.get('format_version')} is not {FORMAT_VERSION}; "
                          "rebuild it with this version of imgfeat")
    binary = faiss.read_index_binary(os.path.join(path, CODES_FILE)) if info.get("code_bytes") else None
    removed_path = os.path.join(path, REMOVED_FILE)
    return IndexParts(info, faiss.read_index(os.path.join(path, VECTORS_FILE)), binary,
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


def write_index_folder(path: str | os.PathLike, parts: IndexParts) -> None:
    """Write (or replace) an index folder atomically.

    Raises:
        OutputError: `path` exists and is not an index folder (nothing is deleted).
        OSError: the write failed; the previous folder is intact.
    """
    faiss = faiss_module()
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not (os.path.isdir(path) and (
            os.path.exists(os.path.join(path, INDEX_JSON)) or not os.listdir(path))):
        raise OutputError(f"{path} exists and is not an index folder: choose another path")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        _write_faiss(faiss.write_index, parts.float_index, os.path.join(tmp, VECTORS_FILE))
        if parts.binary_index is not None:
            _write_faiss(faiss.write_index_binary, parts.binary_index, os.path.join(tmp, CODES_FILE))
        parts.meta.reset_index().to_parquet(os.path.join(tmp, IDS_FILE), index=False, compression="zstd")
        if parts.removed is not None and len(parts.removed):
            np.save(os.path.join(tmp, REMOVED_FILE), parts.removed)
        with open(os.path.join(tmp, INDEX_JSON), "w") as fh:
            json.dump(parts.info, fh, indent=2, sort_keys=True)
        for name in os.listdir(tmp):
            _fsync(os.path.join(tmp, name))
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
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
