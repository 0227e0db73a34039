"""The output: a folder of Parquet shards plus `_manifest.json`, written so a run can resume.

    OUT/_manifest.json           config, source, models and their digests, the input fingerprint,
                                 per-shard row and error counts, the runs (output_runs.py)
    OUT/part-00000.parquet       rows of inputs 0 .. shard_size-1 (in listing order)
    OUT/part-00001.parquet       ...
    OUT/part-00012.parquet       a later run: inputs added to the source since, in new shards

Every file is written to a hidden temporary name, flushed and renamed (`storage.atomic_write`),
so a shard file either holds every row of its inputs or does not exist. Rerunning the same
command writes only the missing shards; the manifest's fingerprint of the inputs a run adds
guarantees that the shards of both runs cut the same inputs. Rerunning it on a source that
gained inputs computes only those, into new shards (old shard files are not touched); with
`prune`, rows of inputs no longer listed are dropped by rewriting their shards. Readers
(pandas, DuckDB, Spark) skip files whose names start with "_" or ".".

The sink deletes only what it wrote: `--overwrite` needs a `_manifest.json` in the folder and
removes the manifest, `part-*.parquet` and temporary files, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from . import output_runs
from .errors import OutputError
from .sources import Item
from .storage import atomic_write, classify, is_temporary, local_path, temporary_target

# what resized the images of outputs whose manifest does not say (models/preprocess.RESIZE_VERSION)
PREPROCESS_UNRECORDED = "area-v1"

MANIFEST = "_manifest.json"
WRITE_CHECK = ".imgfeat-write-check"  # written and removed by `prepare`; a kill may leave it
FORMAT_VERSION = 1
SHARD_PATTERN = re.compile(r"^part-\d{5,}\.parquet$")
# what must match for a resumed run to continue an output
RESUME_KEYS = ("shard_size", "config_fingerprint")
ID_READ_THREADS = 16  # shards whose ids are read at once when planning a run (I/O bound)


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


def cut(items: Sequence[Item], first: int, shard_size: int) -> list["Shard"]:
    """`items` in shards of `shard_size`, numbered from `first`."""
    return [Shard(first + i // shard_size, list(items[i:i + shard_size]))
            for i in range(0, len(items), shard_size)]


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
        self.current_run: dict[str, Any] | None = None  # this call's entry in manifest["runs"]
        self._ids: dict[int, list[str]] = {}  # ids by shard index, read while planning

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

    def plan(self, items: Sequence[Item], settings: dict[str, Any], prune: bool = False) -> list[Shard]:
        """Write the manifest (settings: config, models...) and return the shards still to do:
        those of the unfinished run when it resumes (see `output_runs`), and those of a new run
        for the inputs not in the output yet. The new run is recorded before any shard is written.

        Args:
            prune: `prune` is called next: refuse now (before the manifest changes) if it would
                drop every row, and keep the ids read for it.

        Raises:
            OutputError: the output's models differ from this run's, or `prune` would drop
                every row (no row's input is listed: a wrong source would empty the output).
        """
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
        before = (existing.get("model_digests") or {}).get("preprocess", PREPROCESS_UNRECORDED) if existing else None
        now = (settings.get("model_digests") or {}).get("preprocess")
        if before and now and before != now:
            raise OutputError(f"{self.output} was made by an imgfeat that resized images another way ({before}; "
                              f"this one: {now}): new rows would not match its vectors; extract into another "
                              "output folder, or --overwrite")
        self.clean_temporary()
        if prune:
            self._check_prune(items)
        runs = output_runs.recorded_runs(existing) if existing else []
        todo = self._plan_runs(items, runs, unchanged=bool(existing) and
                               existing.get("inputs_sha256") == self._planned["inputs_sha256"])
        manifest = {
            "format_version": FORMAT_VERSION, **self._planned,
            "num_shards": len(output_runs.expected_shards(runs)), **settings,
            "created": existing.get("created") or output_runs.now(),
            "shards": dict(existing.get("shards") or {}), "complete": False, "runs": runs,
        }
        self.write_manifest(manifest)
        self.manifest = manifest
        if not prune:
            self._ids.clear()
        return todo

    def _plan_runs(self, items: Sequence[Item], runs: list[dict[str, Any]], unchanged: bool) -> list[Shard]:
        """Resume the last run or close it, then add a run for the inputs not in the output;
        `runs` is updated in place. `unchanged`: the listing is the one planned last time."""
        shard_size = self._planned["shard_size"]
        written = self.completed_indexes()
        missing = {i for i in output_runs.expected_shards(runs) if i not in written}
        self.current_run = None
        if runs and missing & set(output_runs.run_shard_indexes(runs[-1])):
            last = runs[-1]
            prior = self.ids([i for i in written if i < last["first_shard"]])
            added = output_runs.added_items(items, prior)
            if fingerprint(added) == last["added_sha256"]:  # the same inputs: the same shards
                self.current_run = last
                shards = cut(added, last["first_shard"], shard_size)
                todo = [s for s in shards if s.index not in written]
                missing -= {s.index for s in shards}
        for run in runs:  # shards of a closed run that will not be written under that name
            lost = sorted(i for i in output_runs.run_shard_indexes(run) if i in missing)
            if lost:
                run["abandoned"] = sorted({*(run.get("abandoned") or []), *lost})
        if self.current_run is not None:
            return todo
        if unchanged and not missing:  # every input of this listing is already in a shard
            return []
        added = output_runs.added_items(items, self.ids(sorted(written)))
        if not added:
            return []
        first = output_runs.next_shard(runs, sorted(written))
        shards = cut(added, first, shard_size)
        self.current_run = output_runs.new_run(runs, first, len(shards), len(added), fingerprint(added),
                                               len(items))
        runs.append(self.current_run)
        return shards

    def completed_indexes(self) -> set[int]:
        return {int(n[len("part-"):-len(".parquet")]) for n in self.completed()}

    def ids(self, indexes: Sequence[int]) -> set[str]:
        """The ids in the given shards (their `id` column, read in parallel threads)."""
        present: set[str] = set()
        for shard_ids in self._shard_ids(indexes).values():
            present.update(shard_ids)
        return present

    def _shard_ids(self, indexes: Sequence[int]) -> dict[int, list[str]]:
        """Ids by shard; kept from `plan` for `prune` so each shard's ids are read once."""
        def read(index: int) -> list[str]:
            return self.read_shard(shard_name(index), ["id"]).column("id").to_pylist()
        unread = [i for i in indexes if i not in self._ids]
        with ThreadPoolExecutor(ID_READ_THREADS) as pool:
            self._ids.update(zip(unread, pool.map(read, unread)))
        return {i: self._ids[i] for i in indexes}

    def _check_prune(self, items: Sequence[Item]) -> None:
        listed = {item.id for item in items}
        present = self._shard_ids(sorted(self.completed_indexes()))
        if any(present.values()) and not any(row_id in listed for ids in present.values() for row_id in ids):
            raise OutputError(f"--prune would drop every row of {self.output}: none of its inputs is in this "
                              "source. Is it the right source? Nothing was changed; to start over, use --overwrite")

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _ids={})  # engines ship the sink to every task: not the ids

    def prune(self, items: Sequence[Item]) -> int:
        """Drop the rows whose inputs are no longer listed: each shard holding one is rewritten
        without them (atomically; a shard left with no rows stays, empty). Returns rows dropped.

        Rewriting, not a tombstone list: every reader of the folder (pandas, DuckDB, Spark,
        `open_features`) then sees the same rows, and a killed prune is finished by the next.
        """
        listed = {item.id for item in items}
        present = self._shard_ids(sorted(self.completed_indexes()))
        dropped = 0
        for index, shard_ids in sorted(present.items()):
            if all(row_id in listed for row_id in shard_ids):
                continue
            table = self.read_shard(shard_name(index))
            kept = table.filter(pa.array([row_id in listed for row_id in shard_ids], pa.bool_()))
            atomic_write(self._path(shard_name(index)), _parquet_writer(kept), fs=self.fs)
            dropped += table.num_rows - kept.num_rows
            self.manifest["shards"][shard_name(index)] = shard_stats(kept)
        self._ids.clear()
        if dropped:
            if self.current_run is None:
                runs = self.manifest["runs"]
                self.current_run = output_runs.new_run(runs, output_runs.next_shard(runs, []), 0, 0,
                                                       fingerprint([]), len(items))
                runs.append(self.current_run)
            self.current_run["pruned"] = self.current_run.get("pruned", 0) + dropped
            self.write_manifest(self.manifest)
        return dropped

    def completed(self) -> set[str]:
        return {n for n in self._names() if SHARD_PATTERN.match(n)}

    def clean_temporary(self) -> None:
        """Remove files left half-written by a killed run.

        A listed file may be gone by the time it is removed: a worker of a failed engine run that
        was still finishing renamed it into place (or another cleaner removed it); both are fine.
        """
        for name in self._names():
            if (is_temporary(name) and imgfeat_file(name)) or name == WRITE_CHECK:
                try:
                    self.fs.rm(self._path(name))
                except FileNotFoundError:
                    pass

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
        run = self.current_run
        if run is not None:
            run["shards_written"] = run.get("shards_written", 0) + sum(
                1 for name in stats if SHARD_PATTERN.match(name) and
                run["first_shard"] <= int(name[5:-8]) < run["first_shard"] + run["num_shards"])
            run["engine"] = (summary.get("last_run") or {}).get("engine")
            indexes = output_runs.run_shard_indexes(run)
            if all(shard_name(i) in done for i in indexes):
                run["finished"] = output_runs.now()
        expected = output_runs.expected_shards(self.manifest.get("runs") or [])
        complete = all(shard_name(i) in done for i in expected)
        self.manifest.update(summary, shards=shards, complete=complete)
        self.write_manifest(self.manifest)
        return {"rows": sum(s["rows"] for s in shards.values()),
                "failed": sum(s["failed"] for s in shards.values())}


def _parquet_writer(table: pa.Table) -> Callable[[Any], None]:
    def write(fh: Any) -> None:
        pq.write_table(table, fh, compression="zstd", row_group_size=max(1, table.num_rows))
    return write
