"""The output: a folder of Parquet shards plus `_manifest.json`, written so a run can resume.

    OUT/_manifest.json           config, source, models and their digests, the input fingerprint,
                                 per-shard row and error counts
    OUT/part-00000.parquet       rows of inputs 0 .. shard_size-1 (in listing order)
    OUT/part-00001.parquet       ...

Every file is written to a hidden temporary name, flushed and renamed (`storage.atomic_write`),
so a shard file either holds every row of its inputs or does not exist. Rerunning the same
command writes only the missing shards; the manifest's fingerprint of the input list
guarantees that the shards of both runs cut the same inputs. Readers (pandas, DuckDB, Spark)
skip files whose names start with "_" or ".".

The sink deletes only what it wrote: `--overwrite` needs a `_manifest.json` in the folder and
removes the manifest, `part-*.parquet` and temporary files, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .errors import OutputError
from .sources import Item
from .storage import atomic_write, classify, is_temporary, local_path, temporary_target

MANIFEST = "_manifest.json"
WRITE_CHECK = ".imgfeat-write-check"  # written and removed by `prepare`; a kill may leave it
FORMAT_VERSION = 1
SHARD_PATTERN = re.compile(r"^part-\d{5,}\.parquet$")
# what must match for a resumed run to continue an output
RESUME_KEYS = ("inputs_sha256", "shard_size", "config_fingerprint")


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


def imgfeat_file(name: str) -> bool:
    """Whether a file name in an output folder is one imgfeat writes (and may delete)."""
    target = temporary_target(name)
    if target is not None:  # only the temporary files of imgfeat's own names, not a user's ".x.tmp-..."
        return imgfeat_file(target)
    return name in (MANIFEST, WRITE_CHECK) or bool(SHARD_PATTERN.match(name))


def shard_stats(table: pa.Table) -> dict[str, Any]:
    """Rows, failed rows and errors by kind of a shard's table (what the manifest records)."""
    errors = Counter(e.split(":", 1)[0] for e in table.column("error").to_pylist() if e is not None)
    return {"rows": table.num_rows, "failed": sum(errors.values()), "errors": dict(errors)}


class ParquetSink:
    """Sharded Parquet output with atomic shard commits and a manifest.

    The driver calls `prepare` (checks, before any model is loaded), then `plan` (writes the
    manifest), the workers `write_shard`, the driver `finish`. Picklable.

    Args:
        output: a local folder or fsspec URL.
    """

    def __init__(self, output: str):
        self.output = str(output)
        self.fs, self.root = url_to_fs(self.output)
        self.local = local_path(self.output) is not None
        self.manifest: dict[str, Any] = {}
        self._planned: dict[str, Any] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name) if self.local else posixpath.join(self.root, name)

    def _names(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]

    def read_manifest(self) -> dict[str, Any] | None:
        path = self._path(MANIFEST)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            try:
                return json.loads(fh.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise OutputError(f"{path} is not a valid imgfeat manifest ({exc}); move the folder "
                                  "aside or choose another output") from exc

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self._path(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode(), fs=self.fs)

    def prepare(self, items: Sequence[Item], shard_size: int, config_fingerprint: str,
                overwrite: bool = False) -> None:
        """Check the output before anything heavy runs: writable, and empty, ours or resumable.

        Raises:
            OutputError: the folder holds files imgfeat did not write, or output of another run
                (without `overwrite`), or it cannot be written.
        """
        self._planned = {"inputs": len(items), "inputs_sha256": fingerprint(items),
                         "shard_size": shard_size, "config_fingerprint": config_fingerprint}
        names = self._names()
        existing = self.read_manifest() if MANIFEST in names else None
        foreign = sorted(n for n in names if not imgfeat_file(n))
        if existing is None and foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise OutputError(f"{self.output} already holds files imgfeat did not write ({shown}) and no "
                              f"{MANIFEST}; choose an empty or new folder (imgfeat never deletes "
                              "files it did not write)")
        if existing is not None and overwrite:
            self.remove_output(names)
            existing = None
        elif existing is not None:
            for key in RESUME_KEYS:
                if existing.get(key) != self._planned[key]:
                    raise OutputError(
                        f"{self.output} holds output of a different run ({key} differs: {existing.get(key)!r} "
                        f"vs {self._planned[key]!r}). Use another output folder, or --overwrite to delete "
                        "that output (only imgfeat's own files in it are removed).")
        self.manifest = existing or {}
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            atomic_write(self._path(WRITE_CHECK), b"", fs=self.fs)
            self.fs.rm(self._path(WRITE_CHECK))
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot write to {self.output}: {classify(exc).detail}") from exc

    def remove_output(self, names: Sequence[str] | None = None) -> None:
        """Delete imgfeat's own files (manifest, shards, temporary files) from the folder."""
        for name in names if names is not None else self._names():
            if imgfeat_file(name):
                self.fs.rm(self._path(name))

    def plan(self, items: Sequence[Item], settings: dict[str, Any]) -> list[Shard]:
        """Write the manifest (settings: config, models...) and return the shards still to do.

        Raises:
            OutputError: the output's models differ from this run's.
        """
        shard_size = self._planned["shard_size"]
        shards = [Shard(i // shard_size, list(items[i:i + shard_size]))
                  for i in range(0, len(items), shard_size)]
        existing = self.manifest
        if existing and existing.get("models") != settings.get("models"):
            raise OutputError(f"{self.output} was made with models {existing.get('models')} but this run "
                              f"uses {settings.get('models')}: use another output folder, or --overwrite")
        for role in ("detector", "embedder"):  # same names, other weights (e.g. an upgraded model file)
            before = (existing.get("model_digests") or {}).get(role) if existing else None
            now = (settings.get("model_digests") or {}).get(role)
            if before and now and before != now:
                raise OutputError(f"{self.output} was made with another {role} file (digest {before}, this run "
                                  f"{now}): its rows would not match; use another output folder, or --overwrite")
        manifest = {
            "format_version": FORMAT_VERSION, **self._planned, "num_shards": len(shards), **settings,
            "created": existing.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": dict(existing.get("shards") or {}), "complete": False,
        }
        self.clean_temporary()
        self.write_manifest(manifest)
        self.manifest = manifest
        done = self.completed()
        return [s for s in shards if s.name not in done]

    def completed(self) -> set[str]:
        return {n for n in self._names() if SHARD_PATTERN.match(n)}

    def clean_temporary(self) -> None:
        """Remove files left half-written by a killed run."""
        for name in self._names():
            if (is_temporary(name) and imgfeat_file(name)) or name == WRITE_CHECK:
                self.fs.rm(self._path(name))

    def write_shard(self, shard: Shard, table: pa.Table) -> dict[str, Any]:
        """Write a complete shard under a temporary name, then rename it into place.

        Returns:
            The shard's stats (rows, failed, errors by kind) for the manifest.
        """
        if table.num_rows != len(shard.items):
            raise AssertionError(f"shard {shard.index}: {table.num_rows} rows for {len(shard.items)} inputs")
        atomic_write(self._path(shard.name), _parquet_writer(table), fs=self.fs)
        return shard_stats(table)

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self._path(name), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def shard_stats(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Stats of the complete shards: from the manifest, else read from the shard itself."""
        known = dict(self.manifest.get("shards") or {})
        for name in sorted(names if names is not None else self.completed()):
            if name not in known:
                known[name] = shard_stats(self.read_shard(name, ["error"]))
        return known

    def failed_ids(self, name: str, kinds: Sequence[str]) -> set[str]:
        """Ids of a shard's rows whose error kind is one of `kinds`."""
        table = self.read_shard(name, ["id", "error"])
        kind = pc.utf8_slice_codeunits(table.column("error"), 0, 64)
        mask = pc.or_kleene(*[pc.starts_with(kind, f"{k}:") for k in kinds]) if len(kinds) > 1 \
            else pc.starts_with(kind, f"{kinds[0]}:")
        return set(table.filter(pc.fill_null(mask, False)).column("id").to_pylist())

    def patch_shard(self, shard: Shard, table: pa.Table) -> dict[str, Any]:
        """Replace the rows of `table`'s ids in a complete shard, atomically; row order kept.

        Returns:
            The shard's new stats.
        """
        old = self.read_shard(shard.name)
        old_ids = old.column("id").to_pylist()
        replacement = {row_id: i for i, row_id in enumerate(table.column("id").to_pylist())}
        missing = set(replacement) - set(old_ids)
        if missing or table.num_rows != len(shard.items):
            raise AssertionError(f"shard {shard.index}: cannot patch {table.num_rows} rows for "
                                 f"{len(shard.items)} inputs ({len(missing)} ids not in the shard)")
        both = pa.concat_tables([old, table.select(old.schema.names).cast(old.schema)])
        rows = [old.num_rows + replacement[row_id] if row_id in replacement else j
                for j, row_id in enumerate(old_ids)]
        merged = both.take(pa.array(rows, pa.int64()))
        atomic_write(self._path(shard.name), _parquet_writer(merged), fs=self.fs)
        return shard_stats(merged)

    def finish(self, summary: dict[str, Any], stats: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Record this run and the shard stats in the manifest; returns the output's totals."""
        shards = self.shard_stats()
        shards.update(stats)
        done = self.completed()
        shards = {name: value for name, value in shards.items() if name in done}
        self.manifest.update(summary, shards=shards, complete=len(done) == self.manifest["num_shards"])
        self.write_manifest(self.manifest)
        return {"rows": sum(s["rows"] for s in shards.values()),
                "failed": sum(s["failed"] for s in shards.values())}


def _parquet_writer(table: pa.Table) -> Callable[[Any], None]:
    def write(fh: Any) -> None:
        pq.write_table(table, fh, compression="zstd", row_group_size=max(1, table.num_rows))
    return write
