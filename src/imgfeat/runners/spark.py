"""The Spark runner: the local runner's shards, each one a Spark task.

    driver   Source.list() -> ParquetSink.plan() (skips complete shards) -> a DataFrame of
             (shard, seq, id, uri, ref), one partition per shard
    tasks    mapInArrow: read the bytes in the worker, decode, detect, embed (models cached per
             Python worker), write the shard (temp name + rename), yield one summary row
    driver   collect the summaries -> RunReport, manifest

Why the tasks write the shards rather than Spark's writer: Spark's file commit protocol
commits a whole job at once and names files part-NNNNN-<uuid>.snappy.parquet, while resume
needs one file per planned shard, committed by itself as soon as it is done. ParquetSink's
temp-name-and-rename gives that from any task attempt; a failed attempt leaves only a hidden
temporary file. For DataFrames you write yourself, use `imgfeat.spark.extract(df)` and Spark's
writers (`df.write.parquet`).

The bytes are read in the workers by the Source (not `spark.read.format("binaryFile")`): ids
come from the same listing as every other engine, Parquet sources need their row references,
and an unreadable file (dangling link, permission) is an error row instead of a failed task.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

from ..config import PipelineConfig
from ..errors import ConfigError, TooManyErrors
from ..sinks import Shard
from ..sources import Item, Source
from .base import ErrorBudget, Progress, RunReport, compute_for_output, finish_run, plan_run
from .tasks import FAULT_ENV, SUMMARY_SCHEMA, ShardTask, cached_pipeline, summaries_stats, with_threads

ITEM_SCHEMA = "shard long, seq long, id string, uri string, ref binary, patch boolean"
SUMMARY_DDL = "shard long, rows long, failed long, errors string, stage_seconds string, stats string"


def check_master(master: str | None, timeout: float = 5.0) -> None:
    """Fail fast when a spark:// master does not answer (Spark itself retries for minutes).

    Raises:
        ConfigError: nothing listens at the master's host and port.
    """
    import socket

    master = master or os.environ.get("MASTER")
    if not master or not master.startswith("spark://"):
        return
    for hostport in master[len("spark://"):].split(","):  # standby masters are comma-separated
        host, _, port = hostport.partition(":")
        try:
            with socket.create_connection((host, int(port or 7077)), timeout=timeout):
                return
        except (OSError, ValueError):
            continue
    raise ConfigError(f"cannot reach the Spark master {master} (no answer within {timeout:.0f} s): start it, "
                      "or check --master / $MASTER")


def spark_session(master: str | None = None) -> tuple[Any, bool]:
    """The active SparkSession, or a new one; True when this call created it (and should stop it).

    The master is `master`, else $MASTER, else what spark-submit set, else "local[*]".
    For local masters the workers run this Python (PYSPARK_PYTHON defaults to sys.executable).

    Raises:
        ConfigError: a session with another master is already running in this process.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    master = master or os.environ.get("MASTER")
    # getActiveSession() is per thread; a running SparkContext is per process
    running_context = SparkContext._active_spark_context
    active = SparkSession.builder.getOrCreate() if running_context is not None else None
    if active is not None:
        running = active.sparkContext.master
        if master and master != running:
            raise ConfigError(f"a Spark session with master {running!r} is already running in this "
                              f"process; stop it or leave out --master {master!r}")
        return active, False
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # launched by spark-submit: it set the master
    if not master and not submitted:
        master = "local[*]"
    if master and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("imgfeat")
    if master:
        builder = builder.master(master)
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")  # a retried task is logged by the driver anyway
    return session, True


@contextlib.contextmanager
def quiet_pandas_warning() -> Iterator[None]:
    """PySpark 4 warns about pandas >= 3 when building Arrow functions; imgfeat's go through
    Arrow only, so the warning says nothing about this run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        yield


def _rows(shard: tuple[int, list[Item], bool]) -> Iterator[tuple[int, int, str, str, bytes, bool]]:
    index, items, patch = shard
    for seq, item in enumerate(items):
        yield index, seq, item.id, item.uri, pickle.dumps(item.ref), patch


def _shard_function(task: ShardTask, done: Any, failed: Any) -> Callable:
    """The mapInArrow function: the rows of a partition (one shard) in, one summary row out."""

    def process(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        by_shard: dict[int, list[tuple[int, Item]]] = {}
        patched: set[int] = set()
        for batch in batches:
            columns = batch.to_pydict()
            for shard, seq, id_, uri, ref, patch in zip(columns["shard"], columns["seq"], columns["id"],
                                                        columns["uri"], columns["ref"], columns["patch"]):
                by_shard.setdefault(shard, []).append((seq, Item(id_, uri, pickle.loads(ref))))
                if patch:
                    patched.add(shard)
        context = TaskContext.get()
        local_task = ShardTask(with_threads(task.config, context.cpus() if context else 1),
                               task.reader, task.sink,
                               task.fault_flag if context is None or context.attemptNumber() == 0 else None)

        def count(rows: int, errors: int) -> None:
            done.add(rows)
            failed.add(errors)

        for shard, entries in sorted(by_shard.items()):
            items = [item for _, item in sorted(entries, key=lambda e: e[0])]
            summary = local_task(Shard(shard, items), on_batch=count, patch=shard in patched)
            yield pa.RecordBatch.from_pylist([summary], schema=SUMMARY_SCHEMA)

    return process


def run_spark(source: Source, output: str, config: PipelineConfig, on_progress: Progress | None = None, *,
              master: str | None = None, **engine_options: Any) -> RunReport:
    """Run the pipeline as Spark tasks, one per output shard. Same output as `run_local`.

    Args:
        source: an opened Source (listed here, in the driver; read in the workers).
        output: folder or URL for the shards; on a cluster, a path every executor can write
            (HDFS, S3, a shared mount).
        config: the whole configuration (`run.workers` is not used: Spark's cores are).
        on_progress: called with (images done, errors so far, images to do) as shards finish.
        master: Spark master URL ("local[2]", "yarn", "k8s://...", "spark://host:7077");
            default $MASTER, spark-submit's, or "local[*]".

    Returns:
        RunReport of this call, as the local runner's.

    Raises:
        MissingExtra: pyspark is not installed.
        ConfigError: unknown engine options, or a running session with another master.
        OutputError: `output` holds another run's output.
        TooManyErrors: more than `config.run.max_error_ratio` of the inputs failed.
    """
    if engine_options:
        raise ConfigError(f"the spark engine takes master=, got {sorted(engine_options)}")
    check_master(master)
    config = compute_for_output(config, output)  # once, here: every task computes the same way
    plan = plan_run(source, output, config, lambda: cached_pipeline(config).features, on_progress)
    if not plan.todo and not plan.retry:
        return finish_run(plan, {}, "spark", stage_seconds={})
    spark, created = spark_session(master)
    try:
        context = spark.sparkContext
        task = ShardTask(config, source.reader(), plan.sink, os.environ.get(FAULT_ENV))
        done, failed = context.accumulator(0), context.accumulator(0)
        shards = [(s.index, s.items, False) for s in plan.todo] + [(s.index, s.items, True) for s in plan.retry]
        # parallelize with as many slices as elements puts exactly one shard in each partition
        rows = context.parallelize(shards, len(shards)).flatMap(_rows)
        with quiet_pandas_warning():
            summaries_df = (spark.createDataFrame(rows, ITEM_SCHEMA)
                            .mapInArrow(_shard_function(task, done, failed), SUMMARY_DDL))
        try:
            summaries = _collect_with_progress(summaries_df, done, failed, plan.todo_count, on_progress,
                                               plan.budget, context)
        except TooManyErrors:
            plan.report.processed, plan.report.failed = done.value, failed.value
            finish_run(plan, {}, "spark", stage_seconds={}, aborted=True)
            raise
    finally:
        if created:
            spark.stop()
    for summary in summaries:
        plan.report.add(summary["rows"], json.loads(summary["errors"]))
    plan.report.retried = sum(len(s.items) for s in plan.retry)
    stats, seconds = summaries_stats(summaries)
    return finish_run(plan, stats, "spark", stage_seconds=seconds)


def _collect_with_progress(df: Any, done: Any, failed: Any, todo: int, on_progress: Progress | None,
                           budget: ErrorBudget, context: Any) -> list[dict[str, Any]]:
    """Collect the summary rows; meanwhile report the accumulators (updated as tasks finish),
    and cancel the job once the error budget is exceeded."""
    result: dict[str, Any] = {}

    def collect() -> None:
        try:
            result["rows"] = [row.asDict() for row in df.collect()]
        except BaseException as exc:  # re-raised in the calling thread below
            result["error"] = exc

    thread = threading.Thread(target=collect, name="imgfeat-spark-collect", daemon=True)
    thread.start()
    reported = 0
    while thread.is_alive():
        thread.join(0.5)
        if on_progress and done.value > reported:
            on_progress(done.value - reported, failed.value, todo)
            reported = done.value
        if budget.exceeded(done.value, failed.value):
            context.cancelAllJobs()
            thread.join()
            budget.check(done.value, failed.value)
    if "error" in result:
        raise result["error"]
    if on_progress and done.value > reported:
        on_progress(done.value - reported, failed.value, todo)
    return result["rows"]


__all__ = ["check_master", "run_spark", "spark_session"]
