"""The Beam runner: the local runner's shards, each one element of a Beam pipeline.

    driver   Source.list() -> ParquetSink.plan() (skips complete shards) -> beam.Create of
             the shards still to do (index, pickled items, patch), reshuffled to the workers
    workers  ShardFn: models loaded once per worker process in DoFn.setup (cached_pipeline);
             per shard: read the bytes, decode, detect, embed, write the shard (temp name +
             rename), count rows, errors and stage seconds in Beam metrics
    driver   wait for the pipeline -> the shards' stats read back from the files it wrote,
             the counts from the committed metrics -> RunReport, manifest

Any Beam runner works (DirectRunner here; DataflowRunner, FlinkRunner, SparkRunner on a
cluster): the pipeline is a Create and one ParDo, and the driver needs nothing back but the
metrics, which every runner reports. The output must be a path every worker can write.

Retries: Dataflow retries a failed bundle (4 times in batch), Flink restarts failed tasks per
its restart strategy; a retried shard is committed by one rename, so it lands once. The
DirectRunner does not retry at all, so the driver does: when the pipeline fails it plans
again (complete shards are skipped, as on any rerun) and submits the rest, up to `attempts`
times in all. Progress is reported when the pipeline ends, and the error budget is checked
then, over the whole output (workers do not share counts while a Beam pipeline runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import threading
from typing import Any, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from ..config import PipelineConfig
from ..errors import ConfigError
from ..sinks import Shard, shard_stats
from ..sources import Source
from .base import Plan, Progress, RunReport, compute_for_output, finish_run, merge_errors, plan_run
from .tasks import FAULT_ENV, ShardTask, cached_pipeline, with_threads

NAMESPACE = "imgfeat"
DIRECT = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_LOAD_LOCK = threading.Lock()  # the DirectRunner's worker threads set up their DoFns at once
log = logging.getLogger(__name__)


class WorkerFault(RuntimeError):
    """The test hook's failure (FAULT_ENV) inside a Beam worker."""


def raise_fault_once(fault_flag: str | None) -> None:
    """Fail this bundle once, if the test hook's flag file exists.

    The Beam form of `tasks.maybe_fail`: the DirectRunner runs DoFns in the driver's process,
    where a hard exit would kill the driver, not a worker; an exception fails the bundle as a
    dead worker does.
    """
    if not fault_flag:
        return
    try:
        os.remove(fault_flag)
    except FileNotFoundError:
        return
    raise WorkerFault("injected worker failure (IMGFEAT_FAULT_ONCE)")


class ShardFn(beam.DoFn):
    """The ParDo: one shard descriptor (index, pickled items, patch) in, one summary out.

    Args:
        task: the planned ShardTask (config, reader, sink); picklable.
        threads: inference threads per worker (`with_threads`).
    """

    def __init__(self, task: ShardTask, threads: int):
        self.task, self.threads = task, threads

    def setup(self) -> None:
        config = with_threads(self.task.config, self.threads)
        with _LOAD_LOCK:
            features = cached_pipeline(config).features  # once per worker process
        self.worker_task = ShardTask(config, self.task.reader, self.task.sink, features=features)

    def process(self, element: tuple[int, bytes, bool]):
        index, items, patch = element
        fault = self.task.fault_flag
        summary = self.worker_task(Shard(index, pickle.loads(items)), patch=patch,
                                   on_batch=lambda done, failed: raise_fault_once(fault))
        # rows and errors for the runner's own monitoring (Dataflow's UI); the driver's report
        # counts them from the committed shards (run_beam), stage seconds from here
        Metrics.counter(NAMESPACE, "rows").inc(summary["rows"])
        for kind, count in json.loads(summary["errors"]).items():
            Metrics.counter(NAMESPACE, f"error:{kind}").inc(count)
        for stage, seconds in json.loads(summary["stage_seconds"]).items():
            Metrics.counter(NAMESPACE, f"ms:{stage}").inc(int(round(seconds * 1000)))
        yield summary


def pipeline_options(runner: str | None, pipeline_args: Sequence[str] | None,
                     shards: int) -> tuple[PipelineOptions, bool]:
    """Beam options for a run, and whether they run on the local DirectRunner.

    `runner` overrides a --runner in `pipeline_args` (default DirectRunner). On the
    DirectRunner the shards run on one worker thread per core (at most one per shard),
    unless `pipeline_args` says otherwise.
    """
    args = list(pipeline_args or [])
    options = PipelineOptions(args)
    chosen = runner or options.view_as(StandardOptions).runner or "DirectRunner"
    args = [a for a in args if not a.startswith("--runner")] + [f"--runner={chosen}"]
    direct = chosen.split(".")[-1] in DIRECT
    if direct and not any(a.startswith("--direct_num_workers") for a in args):
        args += [f"--direct_num_workers={max(1, min(os.cpu_count() or 1, shards))}",
                 "--direct_running_mode=multi_threading"]
    return PipelineOptions(args), direct


def _stage_seconds(result: Any) -> dict[str, float]:
    """Seconds per stage, summed over the workers, from a finished pipeline's committed metrics."""
    seconds: dict[str, float] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed or 0
        if name.startswith("ms:"):
            seconds[name[len("ms:"):]] = seconds.get(name[len("ms:"):], 0.0) + value / 1000
    return seconds


def _submit(plan: Plan, config: PipelineConfig, source: Source, runner: str | None,
            pipeline_args: Sequence[str] | None) -> dict[str, float]:
    """Run one Beam pipeline over the plan's shards; its stage seconds."""
    shards = [(s.index, pickle.dumps(s.items), False) for s in plan.todo]
    shards += [(s.index, pickle.dumps(s.items), True) for s in plan.retry]
    options, direct = pipeline_options(runner, pipeline_args, len(shards))
    if config.run.threads:
        threads = config.run.threads
    elif direct:  # the worker threads share this machine's cores
        workers = options.get_all_options().get("direct_num_workers") or 1
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    else:  # Dataflow's Python workers run one SDK process per vCPU
        threads = 1
    task = ShardTask(config, source.reader(), plan.sink, os.environ.get(FAULT_ENV))
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline | "shards" >> beam.Create(shards, reshuffle=True)
         | "extract" >> beam.ParDo(ShardFn(task, threads)))
    result = pipeline.run()
    result.wait_until_finish()
    return _stage_seconds(result)


def _retried_stats(plan: Plan, shard: Shard) -> dict[str, Any]:
    """Rows and errors of the rows a --retry-errors shard retried, read back from its file."""
    table = plan.sink.read_shard(shard.name, ["id", "error"])
    ids = pa.array([item.id for item in shard.items], table.schema.field("id").type)
    return shard_stats(table.filter(pc.is_in(table["id"], value_set=ids)).select(["error"]))


def run_beam(source: Source, output: str, config: PipelineConfig, on_progress: Progress | None = None, *,
             runner: str | None = None, pipeline_args: Sequence[str] | None = None, attempts: int = 2,
             **engine_options: Any) -> RunReport:
    """Run the pipeline on Apache Beam, one element per output shard. Same output as `run_local`.

    Args:
        source: an opened Source (listed here, in the driver; read in the workers).
        output: folder or URL for the shards; on a cluster, a path every worker can write.
        config: the whole configuration (`run.workers` and `run.streams` are not used).
        on_progress: called with (images done, errors so far, images to do) when the pipeline ends.
        runner: the Beam runner ("DirectRunner" default, "DataflowRunner", "FlinkRunner", ...).
        pipeline_args: more Beam options, as on a Beam command line
            (["--project=p", "--region=r", "--temp_location=gs://b/tmp"]).
        attempts: pipelines submitted at most: when one fails, the driver plans again
            (complete shards are kept) and submits the rest.

    Returns:
        RunReport of this call, as the local runner's.

    Raises:
        MissingExtra: apache-beam is not installed.
        ConfigError: unknown engine options, attempts < 1.
        OutputError: `output` holds another run's output.
        TooManyErrors: more than `config.run.max_error_ratio` of the output's rows failed.
    """
    if engine_options:
        raise ConfigError(f"the beam engine takes runner=, pipeline_args=, attempts=, got {sorted(engine_options)}")
    if attempts < 1:
        raise ConfigError(f"attempts must be >= 1, got {attempts}")
    config = compute_for_output(config, output)  # once, here: every task computes the same way
    first: Plan | None = None
    seconds: dict[str, float] = {}
    for attempt in range(1, attempts + 1):
        plan = plan_run(source, output, config, lambda: cached_pipeline(config).features,
                        on_progress if first is None else None)
        first = first or plan
        if not plan.todo and not plan.retry:
            break
        try:
            seconds = _submit(plan, config, source, runner, pipeline_args)
        except Exception as exc:  # noqa: BLE001 - whatever the runner raised: the shards committed are kept
            if attempt == attempts:
                raise
            log.warning("beam pipeline failed (%s: %s); submitting the shards left, attempt %d of %d",
                        type(exc).__name__, exc, attempt + 1, attempts)
            continue
        break
    assert first is not None
    # what this call wrote: the shards it was given that are committed now, counted from their
    # files (a failed pipeline's other workers may still commit shards after it raised, before
    # the next plan: counting then, or from the metrics, would miss them)
    done = plan.sink.completed()
    todo = [s for s in first.todo if s.name in done]
    retried = [s for s in first.retry if s.name in done]
    stats = {s.name: shard_stats(plan.sink.read_shard(s.name, ["error"])) for s in todo + retried}
    # a retried shard counts the rows it retried (as the local runner does), not the whole shard
    counted = [stats[s.name] for s in todo] + [_retried_stats(plan, s) for s in retried]
    rows = sum(stat["rows"] for stat in counted)
    errors = merge_errors([stat["errors"] for stat in counted])
    report = first.report
    report.add(rows, errors)
    report.retried = sum(len(s.items) for s in first.retry)
    if on_progress and rows:
        on_progress(rows, report.failed, first.todo_count)
    return finish_run(dataclasses.replace(plan, report=report, started=first.started), stats, "beam",
                      stage_seconds=seconds)


__all__ = ["ShardFn", "WorkerFault", "pipeline_options", "run_beam"]
