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

import json
import logging
import os
import pickle
from typing import Any

import pyarrow as pa

from ..config import PipelineConfig
from ..errors import ConfigError, TooManyErrors
from ..sinks import Shard
from ..sources import Source
from .base import Progress, RunReport, compute_for_output, finish_run, plan_run
from .tasks import FAULT_ENV, SUMMARY_SCHEMA, ShardTask, cached_pipeline, summaries_stats, with_threads


def ray_connect(address: str | None = None) -> bool:
    """Connect to Ray: `address`, else $RAY_ADDRESS, else start a local instance.

    Returns:
        True when this call started Ray (and the caller should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_address(address)
    # Ray's notice that a local cluster it starts uses token auth (it does; the token is made and
    # kept by Ray) is not the user's business in an imgfeat run
    setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = setup.level
    setup.setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        setup.setLevel(level)
    # a session imgfeat started is imgfeat's to quiet: its own progress bar and report say
    # what Ray Data's INFO lines and non-TTY progress log would (a user's session is left as is)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast when a Ray address cannot work here (ray.init would hang or print pages).

    Raises:
        ConfigError: a ray:// (Ray Client) address: Ray Data, which runs the shards, does not
            work through the Ray Client (its executor needs a driver inside the cluster; tried
            with Ray 2.60: `'Worker' object has no attribute 'core_worker'`); or nothing answers
            at the address's host and port.
    """
    import socket

    if not address or address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        raise ConfigError(f"the ray engine cannot run through the Ray Client ({address}): Ray Data needs its "
                          "driver inside the cluster. Run imgfeat on a node of the cluster with --address "
                          "HEAD:6379 (the GCS port), or submit it as a job: "
                          "`ray job submit --address http://HEAD:8265 -- imgfeat extract ... --engine ray`")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or address, int(port or 6379)), timeout=timeout):
            return
    except (OSError, ValueError):
        raise ConfigError(f"cannot reach the Ray cluster at {address} (no answer within {timeout:.0f} s): "
                          "start it (`ray start --head`), or check --address / $RAY_ADDRESS") from None


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
    """The map_batches callable: one row per shard (index, pickled items, patch) in, summaries out."""

    def __init__(self, task: ShardTask, threads: int):
        self.task = ShardTask(with_threads(task.config, threads), task.reader, task.sink, task.fault_flag)
        cached_pipeline(self.task.config)  # load the models when the actor starts

    def __call__(self, batch: pa.Table) -> pa.Table:
        summaries = []
        for index, items, patch in zip(batch.column("shard").to_pylist(), batch.column("items").to_pylist(),
                                       batch.column("patch").to_pylist()):
            summaries.append(self.task(Shard(index, pickle.loads(items)), patch=patch))
        return pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)


def run_ray(source: Source, output: str, config: PipelineConfig, on_progress: Progress | None = None, *,
            address: str | None = None, actors: int | None = None,
            cpus_per_actor: float | None = None, **engine_options: Any) -> RunReport:
    """Run the pipeline on Ray Data, one actor task per output shard. Same output as `run_local`.

    Args:
        source: an opened Source (listed here, in the driver; read in the actors).
        output: folder or URL for the shards; on a cluster, a path every node can write.
        config: the whole configuration (`run.workers` is not used: the actors are).
        on_progress: called with (images done, errors so far, images to do) as shards finish.
        address: Ray cluster address ("head:6379", "auto"; not ray://); default $RAY_ADDRESS or local.
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

    check_address(address or os.environ.get("RAY_ADDRESS") or None)
    if ray.is_initialized() and ray.util.client.ray.is_connected():
        check_address("ray://")  # a user's ray.init("ray://..."): the same clear error
    config = compute_for_output(config, output)  # once, here: every task computes the same way
    plan = plan_run(source, output, config, lambda: cached_pipeline(config).features, on_progress)
    if not plan.todo and not plan.retry:
        return finish_run(plan, {}, "ray", stage_seconds={})
    started = ray_connect(address)
    try:
        size, cpus = actor_pool(actors, cpus_per_actor)
        task = ShardTask(config, source.reader(), plan.sink, os.environ.get(FAULT_ENV))
        shards = [{"shard": s.index, "items": pickle.dumps(s.items), "patch": False} for s in plan.todo]
        shards += [{"shard": s.index, "items": pickle.dumps(s.items), "patch": True} for s in plan.retry]
        dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
        results = dataset.map_batches(
            ShardActor, fn_constructor_kwargs={"task": task, "threads": max(1, int(cpus))},
            batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus)
        summaries, report = [], plan.report
        try:
            for summary in results.iter_rows():
                summaries.append(summary)
                report.add(summary["rows"], json.loads(summary["errors"]))
                if on_progress:
                    on_progress(summary["rows"], report.failed, plan.todo_count)
                plan.budget.check(report.processed, report.failed)
        except TooManyErrors:
            stats, seconds = summaries_stats(summaries)
            finish_run(plan, stats, "ray", stage_seconds=seconds, aborted=True)
            raise
    finally:
        if started:
            ray.shutdown()
    report.retried = sum(len(s.items) for s in plan.retry)
    stats, seconds = summaries_stats(summaries)
    return finish_run(plan, stats, "ray", stage_seconds=seconds)


__all__ = ["ShardActor", "actor_pool", "check_address", "ray_connect", "run_ray"]
