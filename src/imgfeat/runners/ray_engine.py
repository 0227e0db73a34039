"""The Ray runner: the local runner's shards, each one a `map_batches` call on an actor pool.

    driver   Source.list() -> ParquetSink.plan() (skips complete shards) -> ray.data.from_items
             of the shards still to do, one block per shard
    actors   ShardActor: models loaded once per actor; per shard: read the bytes, decode,
             detect, embed, write the shard (temp name + rename), return one summary row
    driver   stream the summaries -> progress, RunReport, manifest

Ray Data restarts a dead actor and retries its task (its defaults: max_restarts=-1,
max_task_retries=-1); since a shard is committed by one rename, a retried shard is written
once. As with Spark, the bytes are read by the Source inside the workers, so ids and error
rows match the local runner; `imgfeat.ray.extract(ds)` takes datasets made by Ray's own
readers (`ray.data.read_binary_files`, `read_parquet`).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable

import pyarrow as pa

from ..config import PipelineConfig
from ..errors import ConfigError
from ..sinks import Shard
from ..sources import Source
from ._engine import (
    FAULT_ENV, SUMMARY_SCHEMA, ShardTask, cached_pipeline, finish_run, plan_run, reader_of, with_threads,
)
from .local import RunReport


def ray_connect(address: str | None = None) -> bool:
    """Connect to Ray: `address`, else $RAY_ADDRESS, else start a local instance.

    Returns:
        True when this call started Ray (and the caller should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    # a session imgfeat started is imgfeat's to quiet: its own progress bar and report say
    # what Ray Data's INFO lines and non-TTY progress log would (a user's session is left as is)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def actor_pool(actors: int | None, cpus_per_actor: float | None) -> tuple[int, float]:
    """How many actors and how many CPUs each asks for.

    Default: one actor per CPU of the cluster minus one (Ray Data's own tasks need a CPU:
    an actor on every CPU starves them and the run stalls), at least one. When more actors
    are asked for than CPUs remain, each asks for a fraction of a CPU.
    """
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    if actors is None:
        actors = max(1, int(cpus) - 1)
    if actors < 1:
        raise ConfigError(f"actors must be >= 1, got {actors}")
    if cpus_per_actor is None:
        cpus_per_actor = min(1.0, max(cpus - 0.5, 0.1) / actors)
    return actors, cpus_per_actor


class ShardActor:
    """The map_batches callable: one row per shard (index, pickled items) in, summaries out."""

    def __init__(self, task: ShardTask, threads: int):
        self.task = ShardTask(with_threads(task.config, threads), task.reader, task.sink, task.fault_flag)
        cached_pipeline(self.task.config)  # load the models when the actor starts

    def __call__(self, batch: pa.Table) -> pa.Table:
        summaries = []
        for index, items in zip(batch.column("shard").to_pylist(), batch.column("items").to_pylist()):
            summaries.append(self.task(Shard(index, pickle.loads(items))))
        return pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)


def run_ray(source: Source, output: str, config: PipelineConfig,
            on_progress: Callable[[int, int, int], None] | None = None, *,
            address: str | None = None, actors: int | None = None,
            cpus_per_actor: float | None = None, **engine_options: Any) -> RunReport:
    """Run the pipeline on Ray Data, one actor task per output shard. Same output as `run_local`.

    Args:
        source: an opened Source (listed here, in the driver; read in the actors).
        output: folder or URL for the shards; on a cluster, a path every node can write.
        config: the whole configuration (`run.workers` is not used: the actors are).
        on_progress: called with (images done, errors so far, images to do) as shards finish.
        address: Ray cluster address ("ray://head:10001", "auto"); default $RAY_ADDRESS or local.
        actors: actors in the pool (default: the cluster's CPUs minus one, at least one).
        cpus_per_actor: CPUs each actor reserves (default 1, or a fraction when short).

    Returns:
        RunReport of this call, as the local runner's.

    Raises:
        MissingExtra: ray is not installed.
        ConfigError: unknown engine options.
        OutputError: `output` holds another run's output.
        TooManyErrors: more than `config.run.max_error_ratio` of the inputs failed.
    """
    if engine_options:
        raise ConfigError(f"the ray engine takes address=, actors=, cpus_per_actor=, "
                          f"got {sorted(engine_options)}")
    import ray

    plan = plan_run(source, output, config, on_progress)
    if not plan.todo:
        return finish_run(plan, [], config, "ray")
    started = ray_connect(address)
    try:
        size, cpus = actor_pool(actors, cpus_per_actor)
        task = ShardTask(config, reader_of(source), plan.sink, os.environ.get(FAULT_ENV))
        shards = [{"shard": s.index, "items": pickle.dumps(s.items)} for s in plan.todo]
        dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
        results = dataset.map_batches(
            ShardActor, fn_constructor_kwargs={"task": task, "threads": max(1, int(cpus))},
            batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus)
        summaries, failed = [], 0
        for summary in results.iter_rows():
            summaries.append(summary)
            failed += summary["failed"]
            if on_progress:
                on_progress(summary["rows"], failed, plan.todo_count)
    finally:
        if started:
            ray.shutdown()
    return finish_run(plan, summaries, config, "ray")


__all__ = ["ShardActor", "actor_pool", "ray_connect", "run_ray"]
