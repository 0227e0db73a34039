"""What the engine runners (Spark, Ray) share: the driver's plan and the worker's shard task.

    driver:  plan_run()     list the Source, ParquetSink.plan() the shards (resume), manifest
    worker:  ShardTask      read + decode + Features over one shard's items, in batches,
                            then ParquetSink.write_shard() (temp name + rename) -> a summary row
    driver:  Summaries      add the summary rows into the RunReport, sink.finish()

A shard is the engines' unit of work and of commit: a task that dies before its rename leaves
only a hidden temporary file, the engine retries the task, and the retry writes the whole shard.
So every input lands exactly once, and a rerun skips the shards already there, as locally.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa

from ..config import PipelineConfig
from ..errors import TooManyErrors
from ..sinks import ParquetSink, Shard
from ..sources import Item, Source
from ..stages import Pipeline, ReadDecode
from .local import RunReport, error_kind, manifest_settings

# Test hook: when this variable names an existing file, the first worker to see it deletes it
# and exits hard (os._exit) before writing its shard, as a killed executor would.
FAULT_ENV = "IMGFEAT_FAULT_ONCE"

SUMMARY_SCHEMA = pa.schema([
    pa.field("shard", pa.int64()), pa.field("rows", pa.int64()), pa.field("failed", pa.int64()),
    pa.field("errors", pa.string()), pa.field("stage_seconds", pa.string()),
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


def reader_of(source: Source) -> Source:
    """A copy of `source` without its item list: what a worker needs to read, small to ship."""
    reader = copy.copy(source)
    if hasattr(reader, "_items"):
        reader._items = []  # read() needs only each item's ref; the list can be millions long
    return reader


@dataclass
class Plan:
    """The driver's side of a run: what is left to do and where it goes."""

    items: list[Item]
    sink: ParquetSink
    todo: list[Shard]
    report: RunReport
    started: float

    @property
    def todo_count(self) -> int:
        """Images this run has to process (the inputs less the complete shards)."""
        return self.report.inputs - self.report.skipped


def plan_run(source: Source, output: str, config: PipelineConfig,
             on_progress: Callable[[int, int, int], None] | None = None) -> Plan:
    """List the source and plan the shards exactly as the local runner does (same manifest),
    then tell `on_progress` how many images are to do.

    Raises:
        OutputError: `output` holds another run's output.
    """
    started = time.perf_counter()
    items = source.list()
    if config.run.limit:
        items = items[:config.run.limit]
    # the driver loads the models once for their names, digests and schema (the manifest)
    features = cached_pipeline(config).features
    sink = ParquetSink(output, overwrite=config.run.overwrite)
    todo = sink.plan(items, config.run.shard_size, manifest_settings(config, source, features))
    report = RunReport(output=output, inputs=len(items))
    report.skipped = len(items) - sum(len(s.items) for s in todo)
    plan = Plan(items, sink, todo, report, started)
    if on_progress:
        on_progress(0, 0, plan.todo_count)
    return plan


def finish_run(plan: Plan, summaries: Sequence[dict[str, Any]], config: PipelineConfig,
               engine: str) -> RunReport:
    """Fold the workers' summary rows into the report, finish the manifest, check the error ratio.

    Raises:
        TooManyErrors: more than `config.run.max_error_ratio` of the inputs failed.
    """
    report = plan.report
    for summary in summaries:
        report.processed += summary["rows"]
        report.failed += summary["failed"]
        for kind, count in json.loads(summary["errors"]).items():
            report.errors[kind] = report.errors.get(kind, 0) + count
        for stage, seconds in json.loads(summary["stage_seconds"]).items():
            report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + seconds
    report.ok = report.processed - report.failed
    report.seconds = time.perf_counter() - plan.started
    plan.sink.finish({"last_run": dict(report.to_dict(), engine=engine)})
    if report.processed and report.failed / report.processed > config.run.max_error_ratio:
        raise TooManyErrors(f"{report.failed} of {report.processed} images failed, more than the "
                            f"allowed ratio {config.run.max_error_ratio}; the output is written, "
                            "see `imgfeat info`")
    return report


def maybe_fail(fault_flag: str | None) -> None:
    """Exit this worker process hard once, if the test hook's flag file exists (see FAULT_ENV)."""
    if not fault_flag:
        return
    try:
        os.remove(fault_flag)  # only the worker that removes it dies: exactly one crash
    except FileNotFoundError:
        return
    os._exit(17)


class ShardTask:
    """Process one shard in a worker: read, decode, infer in batches, write it, summarise it.

    Picklable (a config, a reader Source and a sink); the models come from `cached_pipeline`,
    so a reused worker process loads them once.
    """

    def __init__(self, config: PipelineConfig, reader: Source, sink: ParquetSink,
                 fault_flag: str | None = None):
        self.config, self.reader, self.sink, self.fault_flag = config, reader, sink, fault_flag

    def __call__(self, shard: Shard, on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        features = cached_pipeline(self.config).features
        read_decode = ReadDecode(self.reader, self.config.decode)
        before = dict(features.timer.seconds)
        extra: dict[str, float] = {}
        pieces, errors = [], {}
        size = self.config.chunk_size
        for start in range(0, len(shard.items), size):
            decoded, seconds = read_decode(shard.items[start:start + size])
            for stage, value in seconds.items():
                extra[stage] = extra.get(stage, 0.0) + value
            table = features(decoded)
            pieces.append(table)
            failed = [error_kind(e) for e in table.column("error").to_pylist() if e is not None]
            for kind in failed:
                errors[kind] = errors.get(kind, 0) + 1
            if on_batch:
                on_batch(table.num_rows, len(failed))
        maybe_fail(self.fault_flag)
        start = time.perf_counter()
        table = pa.concat_tables(pieces) if pieces else features.schema.empty_table()
        self.sink.write_shard(shard, table)
        extra["write"] = time.perf_counter() - start
        seconds = {k: v - before.get(k, 0.0) for k, v in features.timer.seconds.items()}
        for stage, value in extra.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
        return {"shard": shard.index, "rows": table.num_rows,
                "failed": sum(errors.values()), "errors": json.dumps(errors),
                "stage_seconds": json.dumps(seconds)}


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a user's table hold the id, the path and the image bytes."""

    path: str | None
    content: str | None
    id: str | None


def choose_columns(names: Sequence[str], path_col: str | None, content_col: str | None,
                   id_col: str | None) -> TableColumns:
    """Check the columns asked for, or find them: content "content"/"bytes", path "path"/"uri"...

    Raises:
        ConfigError: a named column is missing, or there is neither bytes nor paths, or
            neither an id nor a path to make ids from.
    """
    from ..errors import ConfigError
    from ..sources import PATH_COLUMN_NAMES

    for column in (path_col, content_col, id_col):
        if column and column not in names:
            raise ConfigError(f"no column {column!r}; columns are {list(names)}")
    if content_col is None:
        content_col = next((n for n in ("content", "bytes", "image_bytes") if n in names), None)
    if path_col is None:
        path_col = next((n for n in names if n.lower() in PATH_COLUMN_NAMES), None)
    if content_col is None and path_col is None:
        raise ConfigError(f"found no bytes column and no path column among {list(names)}; "
                          "name one with content_col= or path_col=")
    if path_col is None and id_col is None:
        raise ConfigError("a table of bytes needs id_col= or path_col= to give each row a stable id")
    return TableColumns(path_col, content_col, id_col)


def plain_path(uri: str) -> str:
    """"file:/x" and "file:///x" (Spark, Hadoop) -> "/x", so ids match the local runner's."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:/"):
        return uri[len("file:"):]
    return uri


def table_features(batch: pa.Table, config: PipelineConfig, columns: TableColumns) -> pa.Table:
    """The output rows of one batch of a user's table (the engines' DataFrame/Dataset API).

    With a bytes column this is `Pipeline(config)` on (id, path, content); with only paths the
    worker reads them like the local runner does, so a missing file is a "not-found" row.
    """
    from ..sources import FileSource, stable_id

    pipeline = cached_pipeline(config)
    paths = ([plain_path(str(p)) for p in batch.column(columns.path).to_pylist()]
             if columns.path else None)
    ids = ([str(i) for i in batch.column(columns.id).to_pylist()] if columns.id
           else [stable_id(p) for p in paths])
    paths = paths if paths is not None else ids
    if columns.content:
        content = batch.column(columns.content)
        if not pa.types.is_binary(content.type):
            content = content.cast(pa.binary())
        return pipeline(pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string()),
                                  "content": content}))
    items = [Item(i, p, p) for i, p in zip(ids, paths)]
    decoded, _ = ReadDecode(FileSource([], {"kind": "paths"}), config.decode)(items)
    return pipeline.features(decoded)
