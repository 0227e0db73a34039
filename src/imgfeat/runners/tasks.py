"""The engines' unit of work: one shard, computed and committed inside a worker.

    ShardTask(config, reader, sink)(shard)   read + decode + Features over the shard's items,
                                             in batches, then ParquetSink.write_shard (temp
                                             name + rename), or patch_shard for --retry-errors
                                             -> a summary row for the driver

A task that dies before its rename leaves only a hidden temporary file; the engine retries
the task and the retry writes the whole shard. So every input lands exactly once, and a
rerun skips the shards already there, as locally. Models come from `cached_pipeline`, so a
reused worker process loads them once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import pyarrow as pa

from ..config import PipelineConfig
from ..sinks import ParquetSink, Shard
from ..sources import Source
from ..stages import Features, Pipeline, ReadDecode

# Test hook: when this variable names an existing file, the first worker to see it deletes it
# and exits hard (os._exit) before writing its shard, as a killed executor would.
FAULT_ENV = "IMGFEAT_FAULT_ONCE"

SUMMARY_SCHEMA = pa.schema([
    pa.field("shard", pa.int64()), pa.field("rows", pa.int64()), pa.field("failed", pa.int64()),
    pa.field("errors", pa.string()), pa.field("stage_seconds", pa.string()), pa.field("stats", pa.string()),
])

_PIPELINES: dict[str, Pipeline] = {}


def cached_pipeline(config: PipelineConfig) -> Pipeline:
    """The Pipeline for `config`, built once per Python process (models load once per worker)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline(config)
    return _PIPELINES[key]


def with_threads(config: PipelineConfig, threads: int) -> PipelineConfig:
    """`config` for one engine task: one inference stream (the engine runs tasks side by
    side), with `threads` inference threads when the user left it at 0: several engine
    workers on one machine must not each take every core."""
    run = dataclasses.replace(config.run, streams=1)
    if not config.run.threads and threads > 0:
        run = dataclasses.replace(run, threads=threads)
    return dataclasses.replace(config, run=run)


def maybe_fail(fault_flag: str | None) -> None:
    """Exit this worker process hard once, if the test hook's flag file exists (see FAULT_ENV)."""
    if not fault_flag:
        return
    try:
        os.remove(fault_flag)  # only the worker that removes it dies: exactly one crash
    except FileNotFoundError:
        return
    os._exit(17)


def summaries_stats(summaries: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Shard stats by name and stage seconds summed, from ShardTask summary rows."""
    stats: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for summary in summaries:
        stats[Shard(summary["shard"], []).name] = json.loads(summary["stats"])
        for stage, value in json.loads(summary["stage_seconds"]).items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    return stats, seconds


class ShardTask:
    """Process one shard in a worker: read, decode, infer in batches, write it, summarise it.

    Picklable (a config, a reader Source and a sink).

    Args:
        config: the run's configuration (use `with_threads` for one engine task).
        reader: the source's `reader()`.
        sink: the planned sink.
        fault_flag: the test hook's flag file (FAULT_ENV), or None.
        features: models already loaded in this process (the local runner's); default: the
            worker's `cached_pipeline(config)`.
    """

    def __init__(self, config: PipelineConfig, reader: Source, sink: ParquetSink,
                 fault_flag: str | None = None, features: Features | None = None):
        self.config, self.reader, self.sink, self.fault_flag = config, reader, sink, fault_flag
        self.features = features

    def __call__(self, shard: Shard, on_batch: Callable[[int, int], None] | None = None,
                 patch: bool = False) -> dict[str, Any]:
        """Compute the shard's items; `patch`: replace just those rows in the existing shard."""
        features = self.features or cached_pipeline(self.config).features
        read_decode = ReadDecode(self.reader, self.config.decode, self.config.run.retry)
        before = dict(features.timer.seconds)
        extra: dict[str, float] = {}
        pieces, errors = [], {}
        size = self.config.chunk_size
        for start in range(0, len(shard.items), size):
            batch = read_decode(shard.items[start:start + size])
            for stage, value in batch.seconds.items():
                extra[stage] = extra.get(stage, 0.0) + value
            pieces.append(features(batch))
            kinds = batch.error_kinds()
            for kind, count in kinds.items():
                errors[kind] = errors.get(kind, 0) + count
            if on_batch:
                on_batch(len(batch), sum(kinds.values()))
        maybe_fail(self.fault_flag)
        start = time.perf_counter()
        table = pa.concat_tables(pieces) if pieces else features.schema.empty_table()
        stats = self.sink.patch_shard(shard, table) if patch else self.sink.write_shard(shard, table)
        extra["write"] = time.perf_counter() - start
        seconds = {k: v - before.get(k, 0.0) for k, v in features.timer.seconds.items()}
        for stage, value in extra.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
        return {"shard": shard.index, "rows": table.num_rows, "failed": sum(errors.values()),
                "errors": json.dumps(errors), "stage_seconds": json.dumps(seconds), "stats": json.dumps(stats)}
