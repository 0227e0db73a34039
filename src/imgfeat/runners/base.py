"""What every runner shares: planning a run, its report, and finishing it.

    compute_for_output()  driver: runtime + precision made concrete once, or taken from
                   the output being resumed (a run never mixes bf16 and fp32 rows)
    plan_run()     driver: list the Source, check the output (before any model loads), load
                   the models, write the manifest, find the shards to do (resume, or a new run
                   for inputs added to the source: sinks/output_runs), drop the rows of inputs
                   gone (--prune) and find the rows to recompute (--retry-errors)
    ErrorBudget    stops a run early once too large a share of images failed
    finish_run()   driver: shard stats into the manifest, the RunReport, the error verdict
                   over the whole output (a rerun of a finished output gives the same verdict)

A runner is a function `run(source, output, config, on_progress=None, **engine_options) ->
RunReport` registered in `runners.RUNNERS`; between plan_run and finish_run it runs
`tasks.ShardTask` (or its own pipelined equivalent) over `plan.todo` and `plan.retry`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .._version import __version__
from ..config import ADDED_LATER, PipelineConfig
from ..errors import ConfigError, OutputError, TooManyErrors
from ..sinks import ParquetSink, Shard
from ..sources import Item, Source
from ..stages import Features
from ..storage import RETRYABLE

Progress = Callable[[int, int, int], None]  # (images done in this step, errors so far, images to do)


@dataclass
class RunReport:
    """What a run did. `errors` counts failed inputs by kind (the text before any detail).

    `output_rows` and `output_failed` count the whole output after the run (earlier runs'
    shards included): the error ratio verdict is taken over them. `skipped` counts the listed
    inputs already in the output; `pruned` the rows dropped because their input is gone.
    """

    output: str
    inputs: int
    processed: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    output_rows: int = 0
    output_failed: int = 0
    pruned: int = 0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def add(self, rows: int, errors: dict[str, int]) -> None:
        """Count a finished batch: its rows and its failed inputs by kind."""
        self.processed += rows
        self.failed += sum(errors.values())
        for kind, count in errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "inputs": self.inputs, "processed": self.processed,
                "skipped": self.skipped, "ok": self.ok, "failed": self.failed, "retried": self.retried,
                "pruned": self.pruned, "errors": self.errors, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2),
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
                "output_rows": self.output_rows, "output_failed": self.output_failed}




def config_fingerprint(config: PipelineConfig) -> str:
    """What must match for a resumed run to continue an output: everything that shapes rows."""
    relevant = {k: v for k, v in config.to_dict().items() if k != "run"}
    for (stage, name), default in ADDED_LATER.items():
        if relevant[stage].get(name) == default:
            relevant[stage] = {k: v for k, v in relevant[stage].items() if k != name}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def recorded_compute(manifest: dict[str, Any] | None) -> tuple[str, str] | None:
    """The (runtime, precision) an output (or an index) was computed with, from its manifest;
    None when it does not say (manifests from before `precision` name only what ran the
    embedder, e.g. "openvino 2025.1.0 CPU bf16", which is read instead)."""
    manifest = manifest or {}
    run = (manifest.get("config") or {}).get("run") or {}
    runtime, precision = run.get("runtime"), run.get("precision")
    if runtime in ("onnxruntime", "openvino") and precision in ("fp32", "bf16", "int8"):
        return runtime, precision
    described = str((manifest.get("model_digests") or {}).get("runtime") or "")
    if described.startswith("onnxruntime"):
        return "onnxruntime", "fp32"
    named = {"f32": "fp32", "fp32": "fp32", "bf16": "bf16"}.get(described.split()[-1] if described else "")
    if described.startswith("openvino") and named:
        return "openvino", named
    return None


def compute_for_output(config: PipelineConfig, output: str) -> PipelineConfig:
    """`config` with a concrete runtime and precision: those recorded by the output being
    resumed, else "auto" resolved for this machine. Runners call it once, on the driver,
    and hand the result to every task, so executors on another kind of CPU compute the same.

    Raises:
        OutputError: the output was computed with another runtime or precision than the one
            asked for, or with one this machine cannot compute (bf16 on a CPU without it).
        ConfigError, MissingExtra: a choice this machine cannot compute.
    """
    recorded = None if config.run.overwrite else recorded_compute(ParquetSink(output).read_manifest())
    if recorded is None:
        return dataclasses.replace(config, run=config.run.resolved_compute())
    runtime, precision = recorded
    asked = (config.run.runtime, config.run.precision)
    if asked[0] not in ("auto", runtime) or asked[1] not in ("auto", precision):
        raise OutputError(f"{output} was computed with {runtime} {precision}, but this run asks for "
                          f"runtime {asked[0]} precision {asked[1]}: one output must not mix them (bf16 "
                          f"and int8 move embeddings and near-tied detections). Resume with --runtime {runtime} "
                          f"--precision {precision} (or auto), or use another output folder or --overwrite")
    run = dataclasses.replace(config.run, runtime=runtime, precision=precision)
    try:
        run = run.resolved_compute()
    except ConfigError as exc:
        raise OutputError(f"{output} was computed with {runtime} {precision}, which this machine cannot "
                          f"compute ({exc}); resume it where it can, or use another output folder or "
                          "--overwrite") from exc
    return dataclasses.replace(config, run=run)


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


class ErrorBudget:
    """Raises TooManyErrors once more than `ratio` of at least `min_count` images failed."""

    def __init__(self, ratio: float, min_count: int):
        self.ratio, self.min_count = ratio, min_count

    def exceeded(self, done: int, failed: int, min_count: int | None = None) -> bool:
        floor = self.min_count if min_count is None else min_count
        return self.ratio < 1.0 and done >= max(1, floor) and failed / done > self.ratio

    def check(self, done: int, failed: int, where: str = "so far", min_count: int | None = None) -> None:
        """Raise when the ratio is exceeded (over `min_count` images, default the budget's)."""
        if self.exceeded(done, failed, min_count):
            raise TooManyErrors(f"{failed} of {done} images failed {where}, more than the allowed ratio "
                                f"{self.ratio} (--max-error-ratio); the shards finished are kept, see "
                                "`imgfeat info` for the reasons")


@dataclass
class Plan:
    """The driver's side of a run: what is left to do and where it goes.

    `todo` are whole shards to compute; `retry` are complete shards with only the items to
    recompute (--retry-errors), patched into the shard in place.
    """

    items: list[Item]
    sink: ParquetSink
    features: Features
    todo: list[Shard]
    retry: list[Shard]
    report: RunReport
    started: float
    budget: ErrorBudget

    @property
    def todo_count(self) -> int:
        """Images this run has to process."""
        return sum(len(s.items) for s in self.todo) + sum(len(s.items) for s in self.retry)


def plan_run(source: Source, output: str, config: PipelineConfig, load_features: Callable[[], Features],
             on_progress: Progress | None = None) -> Plan:
    """List the source, check the output, load the models, write the manifest, plan the shards;
    then tell `on_progress` how many images are to do.

    Args:
        load_features: builds (or returns the cached) Features: called after the output checks,
            so a bad output fails before any model is loaded.

    Raises:
        OutputError: `output` cannot be written, or holds something this run must not touch.
    """
    if not config.run.compute_resolved:
        raise ConfigError("plan_run needs a concrete runtime and precision: the runner calls "
                          "compute_for_output(config, output) first and hands its result to the tasks")
    started = time.perf_counter()
    items = source.list()
    if config.run.limit:
        items = items[:config.run.limit]
    sink = ParquetSink(output)
    sink.prepare(items, config.run.shard_size, config_fingerprint(config), config.run.overwrite)
    loading = time.perf_counter()
    features = load_features()
    features.timer.add("load", time.perf_counter() - loading)  # model load/compile, once per run
    todo = sink.plan(items, manifest_settings(config, source, features), prune=config.run.prune)
    pruned = sink.prune(items) if config.run.prune else 0
    retry = _retry_shards(sink, items, todo) if config.run.retry_errors else []
    report = RunReport(output=output, inputs=len(items), pruned=pruned)
    report.skipped = len(items) - sum(len(s.items) for s in todo) - sum(len(s.items) for s in retry)
    plan = Plan(items, sink, features, todo, retry, report, started,
                ErrorBudget(config.run.max_error_ratio, config.run.min_error_count))
    if on_progress:
        on_progress(0, 0, plan.todo_count)
    return plan


def _retry_shards(sink: ParquetSink, items: list[Item], todo: Sequence[Shard]) -> list[Shard]:
    """Complete shards holding rows that failed for a transient reason, with just those items
    (those still listed: the source is the one place an input can be read from)."""
    pending = {s.index for s in todo}
    stats = sink.shard_stats()
    by_id = {item.id: item for item in items}
    shards = []
    for index in sorted(sink.completed_indexes() - pending):
        name = Shard(index, []).name
        if not any(stats.get(name, {}).get("errors", {}).get(k) for k in RETRYABLE):
            continue
        chosen = [by_id[row_id] for row_id in sorted(sink.failed_ids(name, RETRYABLE)) if row_id in by_id]
        if chosen:
            shards.append(Shard(index, chosen))
    return shards


def finish_run(plan: Plan, stats: dict[str, dict[str, Any]], engine: str,
               stage_seconds: dict[str, float] | None = None, aborted: bool = False) -> RunReport:
    """Record the shard stats and this run in the manifest, and check the error ratio.

    Args:
        stats: the stats (rows, failed, errors) of every shard this run wrote, by shard name.
        engine: the runner's name, for the manifest.
        stage_seconds: seconds per stage summed over the workers (default: the driver's timer).
        aborted: the run stopped early (ErrorBudget); the verdict is then this run's.

    Raises:
        TooManyErrors: more than `max_error_ratio` of the output's rows failed.
    """
    report = plan.report
    report.ok = report.processed - report.failed
    report.seconds = time.perf_counter() - plan.started
    report.stage_seconds = dict(stage_seconds if stage_seconds is not None else plan.features.timer.seconds)
    totals = plan.sink.finish({"last_run": dict(report.to_dict(), engine=engine, aborted=aborted)}, stats)
    report.output_rows, report.output_failed = totals["rows"], totals["failed"]
    if not aborted and report.output_rows:
        plan.budget.check(report.output_rows, report.output_failed, where="in the output", min_count=1)
    return report


def merge_errors(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    """Sum error counts by kind."""
    total: Counter = Counter()
    for count in counts:
        total.update(count)
    return dict(total)
