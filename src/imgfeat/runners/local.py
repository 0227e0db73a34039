"""The local runner: one machine, overlapping stages.

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
import hashlib
import json
import queue
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from .._version import __version__
from ..config import PipelineConfig
from ..errors import TooManyErrors
from ..sinks import ParquetSink, Shard
from ..sources import Item, Source
from ..stages import DecodedItem, Features, ReadDecode, StageTimer

@dataclass
class RunReport:
    """What a run did. `errors` counts failed inputs by reason (the text before any detail)."""

    output: str
    inputs: int
    processed: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "inputs": self.inputs, "processed": self.processed,
                "skipped": self.skipped, "ok": self.ok, "failed": self.failed, "errors": self.errors,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}


def error_kind(reason: str) -> str:
    """The kind of an error reason: "corrupt: cannot decode (...)" -> "corrupt"."""
    return reason.split(":", 1)[0]


def config_fingerprint(config: PipelineConfig) -> str:
    """What must match for a resumed run to continue an output: everything that shapes rows."""
    relevant = {k: v for k, v in config.to_dict().items() if k != "run"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def manifest_settings(config: PipelineConfig, source: Source, features: Features) -> dict[str, Any]:
    """What every runner records in the manifest; resume compares part of it."""
    return {
        "imgfeat_version": __version__,
        "config": config.to_dict(),
        "config_fingerprint": config_fingerprint(config),
        "source": source.describe(),
        "models": features.models,
        "model_digests": features.digests,
        "schema": [f"{f.name}: {f.type}" for f in features.schema],
    }


def _batches(shards: Sequence[Shard], size: int) -> Iterator[tuple[Shard, list[Item], bool]]:
    """(shard, items, last-batch-of-shard) in order; batches never cross shards."""
    for shard in shards:
        for start in range(0, len(shard.items), size):
            yield shard, shard.items[start:start + size], start + size >= len(shard.items)


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

    def map(self, batches: Iterator[tuple[Shard, list[Item], bool]]
            ) -> Iterator[tuple[Shard, bool, list[DecodedItem], dict[str, float]]]:
        if self.pool is None:
            for shard, items, last in batches:
                decoded, seconds = self.stage(items)
                yield shard, last, decoded, seconds
            return
        pool = self.pool
        for (shard, _, last), (decoded, seconds) in _in_order(
                batches, lambda job: pool.submit(self.stage, job[1]), self.prefetch):
            yield shard, last, decoded, seconds

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

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            shard, table = job
            start = time.perf_counter()
            try:
                self.sink.write_shard(shard, table)
            except BaseException as exc:  # surfaced by put()/close() in the main thread
                self.error = exc
                return
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


def run_local(source: Source, output: str, config: PipelineConfig,
              on_progress: Callable[[int, int, int], None] | None = None, **engine_options: Any) -> RunReport:
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
        OutputError: `output` holds another run's output.
        TooManyErrors: more than `config.run.max_error_ratio` of the inputs failed.
    """
    if engine_options:
        from ..errors import ConfigError
        raise ConfigError(f"the local engine takes no engine options, got {sorted(engine_options)}")
    started = time.perf_counter()
    run = config.run
    items = source.list()
    if run.limit:
        items = items[:run.limit]
    loading = time.perf_counter()
    features = Features(config)
    features.timer.add("load", time.perf_counter() - loading)  # model load/compile, once per run
    sink = ParquetSink(output, overwrite=run.overwrite)
    todo = sink.plan(items, run.shard_size, manifest_settings(config, source, features))
    report = RunReport(output=output, inputs=len(items))
    report.skipped = len(items) - sum(len(s.items) for s in todo)
    timer = features.timer
    todo_count = report.inputs - report.skipped
    if on_progress:
        on_progress(0, 0, todo_count)

    decoder = _Decoder(ReadDecode(source, config.decode), run.workers, prefetch=2 * run.workers + 2)
    streams: Executor = ThreadPoolExecutor(config.inference_streams, thread_name_prefix="imgfeat-infer")
    writer = _Writer(sink, timer)
    writer.start()
    pieces: list[pa.Table] = []

    def infer(job: tuple[Shard, bool, list[DecodedItem], dict[str, float]]) -> Future:
        timer.merge(job[3])
        return streams.submit(features, job[2])

    try:
        decoded_batches = decoder.map(_batches(todo, config.chunk_size))
        for (shard, last, _, _), table in _in_order(decoded_batches, infer, config.inference_streams):
            pieces.append(table)
            failed = [r for r in table.column("error").to_pylist() if r is not None]
            for reason in failed:
                kind = error_kind(reason)
                report.errors[kind] = report.errors.get(kind, 0) + 1
            report.processed += table.num_rows
            report.failed += len(failed)
            if on_progress:
                on_progress(table.num_rows, report.failed, todo_count)
            if last:
                writer.put(shard, pa.concat_tables(pieces))
                pieces = []
    finally:
        streams.shutdown(wait=True, cancel_futures=True)
        decoder.close()
        writer.close()
    report.ok = report.processed - report.failed
    report.seconds = time.perf_counter() - started
    report.stage_seconds = dict(timer.seconds)
    sink.finish({"last_run": report.to_dict()})
    if report.processed and report.failed / report.processed > run.max_error_ratio:
        raise TooManyErrors(f"{report.failed} of {report.processed} images failed, more than the "
                            f"allowed ratio {run.max_error_ratio}; the output is written, see `imgfeat info`")
    return report
