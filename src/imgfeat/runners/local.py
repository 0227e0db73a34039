"""The local runner: one machine, overlapping stages. The reference every engine is tested against.

    decode threads:    read + decode batch n+3, n+2 ...      (bounded number in flight)
    inference threads: detect + crop + embed + hash batches n+1 and n (`streams` of them:
                       one batch's Python work runs while the other is in the networks)
    main thread:       collects results in order, counts errors, reports progress
    writer thread:     Parquet shard k-1                      (bounded queue)

Memory stays flat: at most `2 * workers + 2` decoded batches, `streams` batches in
inference and two finished shards exist at any time, whatever the number of inputs.
"""

from __future__ import annotations

import collections
import json
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from ..config import PipelineConfig
from ..errors import ConfigError, TooManyErrors
from ..sinks import ParquetSink, Shard
from ..sources import Item, Source
from ..stages import Features, ImageBatch, ReadDecode, StageTimer
from .base import Plan, Progress, RunReport, compute_for_output, finish_run, plan_run
from .tasks import ShardTask


@dataclass
class _Job:
    """A pipeline batch: items of one shard (batches never cross shards)."""

    shard: Shard
    items: list[Item]
    last: bool  # the shard's last batch: the shard can be written after it


def _jobs(shards: Sequence[Shard], size: int) -> Iterator[_Job]:
    for shard in shards:
        for start in range(0, len(shard.items), size):
            yield _Job(shard, shard.items[start:start + size], start + size >= len(shard.items))


def _in_order(jobs: Iterator[Any], submit: Callable[[Any], Future], depth: int) -> Iterator[tuple[Any, Any]]:
    """(job, result) in job order, keeping up to `depth` jobs submitted ahead of the consumer."""
    pending: collections.deque[tuple[Any, Future]] = collections.deque()
    for job in jobs:
        pending.append((job, submit(job)))
        if len(pending) >= depth:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


class _Decoder:
    """Reads and decodes batches ahead of the consumer, in threads, and yields them in order.

    Threads, not processes: libjpeg-turbo (simplejpeg), Pillow's codecs and file reads
    release the GIL, and a thread hands its arrays over without pickling them through a
    pipe (~2 ms per 1 MP image): 1.05x end to end on 2 cores (docs/benchmarks.md).
    """

    def __init__(self, stage: ReadDecode, workers: int, prefetch: int):
        self.stage = stage
        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="imgfeat-decode") if workers > 0 else None

    def map(self, jobs: Iterator[_Job]) -> Iterator[tuple[_Job, ImageBatch]]:
        if self.pool is None:
            for job in jobs:
                yield job, self.stage(job.items)
            return
        pool = self.pool
        yield from _in_order(jobs, lambda job: pool.submit(self.stage, job.items), self.prefetch)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Writer(threading.Thread):
    """Writes finished shards off the critical path; re-raises its error in the caller."""

    def __init__(self, sink: ParquetSink, timer: StageTimer):
        super().__init__(name="imgfeat-writer", daemon=True)
        self.sink, self.timer = sink, timer
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.stats: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:  # a write failed: drain the queue, so put()/close() never block
                continue
            shard, table = job
            start = time.perf_counter()
            try:
                self.stats[shard.name] = self.sink.write_shard(shard, table)
            except BaseException as exc:  # surfaced by put()/close() in the main thread
                self.error = exc
                continue
            self.timer.add("write", time.perf_counter() - start)

    def put(self, shard: Shard, table: pa.Table) -> None:
        if self.error:
            raise self.error
        self.jobs.put((shard, table))

    def close(self) -> None:
        self.jobs.put(None)
        self.join()
        if self.error:
            raise self.error


def _run_shards(plan: Plan, source: Source, config: PipelineConfig, on_progress: Progress | None,
                writer: _Writer) -> None:
    """The pipelined part: every shard of plan.todo through decode threads, inference streams
    and the writer, in order."""
    features, report, timer = plan.features, plan.report, plan.features.timer
    run = config.run
    decoder = _Decoder(ReadDecode(source.reader(), config.decode, run.retry), run.workers,
                       prefetch=2 * run.workers + 2)
    streams = ThreadPoolExecutor(config.inference_streams, thread_name_prefix="imgfeat-infer")

    def infer(job_and_batch: tuple[_Job, ImageBatch]) -> Future:
        timer.merge(job_and_batch[1].seconds)
        return streams.submit(features, job_and_batch[1])

    pieces: list[pa.Table] = []
    try:
        for (job, batch), table in _in_order(decoder.map(_jobs(plan.todo, config.chunk_size)), infer,
                                             config.inference_streams):
            pieces.append(table)
            errors = batch.error_kinds()
            report.add(len(batch), errors)
            if on_progress:
                on_progress(len(batch), report.failed, plan.todo_count)
            if job.last:
                writer.put(job.shard, pa.concat_tables(pieces))
                pieces = []
            plan.budget.check(report.processed, report.failed)
    finally:
        streams.shutdown(wait=True, cancel_futures=True)
        decoder.close()


def run_local(source: Source, output: str, config: PipelineConfig, on_progress: Progress | None = None,
              **engine_options: Any) -> RunReport:
    """Run the pipeline on this machine. See `imgfeat.extract` for the user-facing form.

    Args:
        source: an opened Source.
        output: folder or fsspec URL for the Parquet shards.
        config: the whole configuration.
        on_progress: called with (images done in the batch, errors so far, images to do)
            once before the first batch and after each batch.

    Returns:
        RunReport of this call (shards already complete are counted as skipped).

    Raises:
        OutputError: `output` holds another run's output, or cannot be written.
        TooManyErrors: more than `config.run.max_error_ratio` of the images failed.
    """
    if engine_options:
        raise ConfigError(f"the local engine takes no engine options, got {sorted(engine_options)}")
    config = compute_for_output(config, output)  # once, here: every task computes the same way
    plan = plan_run(source, output, config, lambda: Features(config), on_progress)
    writer = _Writer(plan.sink, plan.features.timer)
    writer.start()
    try:
        try:
            _run_shards(plan, source, config, on_progress, writer)
        finally:
            writer.close()
        if plan.retry:
            _retry_rows(plan, source, config, on_progress, writer.stats)
    except TooManyErrors:
        finish_run(plan, writer.stats, "local", aborted=True)
        raise
    return finish_run(plan, writer.stats, "local")


def _retry_rows(plan: Plan, source: Source, config: PipelineConfig, on_progress: Progress | None,
                stats: dict[str, dict[str, Any]]) -> None:
    """--retry-errors: recompute the transiently failed rows of complete shards, in place."""
    task = ShardTask(config, source.reader(), plan.sink, features=plan.features)
    report = plan.report
    for shard in plan.retry:
        summary = task(shard, patch=True)
        report.add(summary["rows"], json.loads(summary["errors"]))
        report.retried += summary["rows"]
        stats[shard.name] = json.loads(summary["stats"])
        if on_progress:
            on_progress(summary["rows"], report.failed, plan.todo_count)
