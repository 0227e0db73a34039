"""The output: a folder of Parquet shards plus `_manifest.json`, written so a run can resume.

    OUT/_manifest.json           config, source, models and their digests, the input fingerprint
    OUT/part-00000.parquet       rows of inputs 0 .. shard_size-1 (in listing order)
    OUT/part-00001.parquet       ...

A shard is written to a hidden temporary name and renamed once complete, so a shard file
either holds every row of its inputs or does not exist. Rerunning the same command writes
only the missing shards; the manifest's fingerprint of the input list guarantees that the
shards of both runs cut the same inputs. Readers (pandas, DuckDB, Spark) skip files whose
names start with "_" or ".".
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .errors import OutputError
from .sources import Item

MANIFEST = "_manifest.json"
FORMAT_VERSION = 1


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def fingerprint(items: Sequence[Item]) -> str:
    """SHA-256 over the ids and URIs of the inputs, in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.id.encode())
        digest.update(b"\0")
        digest.update(item.uri.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass
class Shard:
    index: int
    items: list[Item]

    @property
    def name(self) -> str:
        return shard_name(self.index)


class ParquetSink:
    """Sharded Parquet output with atomic shard commits and a manifest.

    Args:
        output: a local folder or fsspec URL.
        overwrite: delete what is there first.
    """

    def __init__(self, output: str, overwrite: bool = False):
        self.output = str(output)
        self.fs, self.root = url_to_fs(self.output)
        self.local = isinstance(self.fs, LocalFileSystem)
        if overwrite and self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name) if self.local else posixpath.join(self.root, name)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self._path(MANIFEST)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as fh:
            return json.load(fh)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._atomic_write(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = self._path(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self._commit(tmp, self._path(name))

    def _commit(self, tmp: str, final: str) -> None:
        if self.local:
            os.replace(tmp, final)  # atomic on POSIX
        else:
            self.fs.mv(tmp, final)

    def plan(self, items: Sequence[Item], shard_size: int, settings: dict[str, Any]) -> list[Shard]:
        """Cut inputs into shards, check them against an existing output, return the missing ones.

        `settings` (config, models) goes into the manifest; on resume, the input fingerprint,
        shard size and settings must match what is there.

        Raises:
            OutputError: the folder holds output of different inputs or settings.
        """
        shards = [Shard(i // shard_size, list(items[i:i + shard_size]))
                  for i in range(0, len(items), shard_size)]
        manifest = {
            "format_version": FORMAT_VERSION,
            "inputs": len(items),
            "inputs_sha256": fingerprint(items),
            "shard_size": shard_size,
            "num_shards": len(shards),
            **settings,
        }
        existing = self.read_manifest()
        if existing is not None:
            for key in ("inputs_sha256", "shard_size", "models", "config_fingerprint"):
                if existing.get(key) != manifest.get(key):
                    raise OutputError(
                        f"{self.output} holds output of a different run ({key} differs: "
                        f"{existing.get(key)!r} vs {manifest.get(key)!r}). Use --overwrite to start "
                        "over, or another output folder.")
            manifest["created"] = existing.get("created")
        else:
            if self.fs.exists(self.root) and any(
                    not posixpath.basename(p).startswith(".") for p in self.fs.ls(self.root, detail=False)):
                raise OutputError(f"{self.output} is not empty and has no {MANIFEST}; "
                                  "choose an empty folder or use --overwrite")
            manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["complete"] = False
        self.clean_temporary()
        self.write_manifest(manifest)
        self.manifest = manifest
        done = self.completed()
        return [s for s in shards if s.name not in done]

    def completed(self) -> set[str]:
        return {posixpath.basename(p) for p in self.fs.ls(self.root, detail=False)
                if posixpath.basename(p).startswith("part-") and p.endswith(".parquet")}

    def clean_temporary(self) -> None:
        """Remove shards left half-written by a killed run."""
        for path in self.fs.ls(self.root, detail=False):
            if ".tmp-" in posixpath.basename(path):
                self.fs.rm(path)

    def write_shard(self, shard: Shard, table: pa.Table) -> None:
        """Write a complete shard under a temporary name, then rename it into place."""
        if table.num_rows != len(shard.items):
            raise AssertionError(f"shard {shard.index}: {table.num_rows} rows for {len(shard.items)} inputs")
        tmp = self._path(f".{shard.name}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd", row_group_size=max(1, table.num_rows))
        self._commit(tmp, self._path(shard.name))

    def finish(self, summary: dict[str, Any]) -> None:
        self.manifest.update(summary, complete=len(self.completed()) == self.manifest["num_shards"])
        self.write_manifest(self.manifest)
