"""The training loop: one process, or N data-parallel processes (torch DistributedDataParallel,
gloo on CPU, nccl on GPU) started with torch.multiprocessing on this machine (engine "local")
or by pyspark's TorchDistributor (engine "spark": torchrun on the driver in local mode, one
Spark task per process on a cluster) or by Ray Train's TorchTrainer (engine "ray").

    train(config, data) -> TrainLog      runs (or resumes) up to config.steps optimiser steps

Every worker takes its slice of the global batch (data.StepSampler), embeds it, and all
embeddings are gathered (torch.distributed.nn.all_gather, which carries gradients back), so
every worker computes the loss of the whole global batch; DDP averages the gradients. The
result matches one worker with the same global batch up to floating-point noise.

Worker 0 writes `checkpoints/last.pt` every `checkpoint_every` steps and at the end, atomically
(a temporary file renamed over the old one): the weights, the optimiser state, the step and the
losses so far, all plain tensors and numbers, read back with `torch.load(weights_only=True)`.
A rerun with the same output continues from there and visits the same batches it would have.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingExtra
from ..storage import atomic_write
from .config import FinetuneConfig
from .data import StepSampler, TrainingData, ViewDataset, make_loader
from .losses import info_nce, supervised_loss
from .model import FinetuneNet, input_spec

CHECKPOINT = "checkpoints/last.pt"
TRAIN_LOG = "train_log.json"


@dataclass
class TrainLog:
    """What a training run did (worker 0's view; the loss is the global batch's)."""

    steps: int
    resumed_from: int
    losses: list[float]
    images_per_second: float
    seconds: float
    workers: int
    unreadable: int = 0


class Trainee(nn.Module):
    """The network and its loss in one module, so DistributedDataParallel sees every weight."""

    def __init__(self, config: FinetuneConfig, classes: int):
        super().__init__()
        self.config = config
        self.net = FinetuneNet(config.backbone, config.cut_at, config.freeze_to, config.head_dim)
        self.objective = (supervised_loss(config.loss, self.net.dim, classes, config.temperature, config.margin)
                          if config.mode == "supervised" else None)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.objective is None:
            first = _gather(self.net(batch["view0"]))
            second = _gather(self.net(batch["view1"]))
            return info_nce(first, second, self.config.temperature)
        embeddings = _gather(self.net(batch["view0"]))
        return self.objective(embeddings, _gather(batch["label"]))


class _GatherRows(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient of the gathered rows and hands each
    worker its own rows' share (each worker computes the same global loss)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, local.contiguous())
        ctx.rows, ctx.rank = local.shape[0], torch.distributed.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, gathered_grad: torch.Tensor) -> torch.Tensor:
        total = gathered_grad.contiguous().clone()
        torch.distributed.all_reduce(total)
        return total[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def _gather(local: torch.Tensor) -> torch.Tensor:
    """The rows of every worker in rank order (gradients flow back to each worker's rows)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    return _GatherRows.apply(local)


def checkpoint_path(output: str | os.PathLike) -> Path:
    return Path(output) / CHECKPOINT


def load_checkpoint(output: str | os.PathLike) -> dict[str, Any] | None:
    """The last checkpoint in `output`, or None. Read with weights_only=True: no code runs."""
    path = checkpoint_path(output)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_checkpoint(config: FinetuneConfig, trainee: Trainee, optimizer: torch.optim.Optimizer, step: int,
                     losses: list[float], classes: list[str]) -> None:
    path = checkpoint_path(config.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "config": config.to_dict(),
             "model": trainee.state_dict(), "optimizer": optimizer.state_dict(),
             "losses": list(losses), "classes": list(classes)}
    atomic_write(str(path), lambda fh: torch.save(state, fh))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(config: FinetuneConfig, data: TrainingData) -> TrainLog:
    """Train (or resume) up to `config.steps` steps on `config.workers` processes.

    Returns:
        The TrainLog of worker 0 (also written to OUTPUT/train_log.json).

    Raises:
        ConfigError: the output holds a checkpoint of a different training.
    """
    if config.detector and not config.detector.startswith("onnx:"):
        from ..errors import UnknownModel
        from ..models import list_detectors

        if config.detector not in list_detectors():
            raise UnknownModel(f"unknown detector {config.detector!r}; known: {', '.join(list_detectors())}")
    Path(config.output).mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(config.output)
    if state is not None:  # here, not in the workers: a mismatch is a clean error, not N tracebacks
        config.check_resumable(state["config"])
    if config.engine == "spark":
        _train_on_spark(config, data)
    elif config.engine == "ray":
        _train_on_ray(config, data)
    elif config.workers == 1:
        return _run_worker(0, config, data, None)
    else:
        import torch.multiprocessing as mp

        address = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(_spawned_worker, args=(config, data, address), nprocs=config.workers, join=True)
    with open(Path(config.output) / TRAIN_LOG) as fh:
        return TrainLog(**json.load(fh))


def _train_on_spark(config: FinetuneConfig, data: TrainingData) -> None:
    """N torchrun processes through pyspark's TorchDistributor: on the driver when Spark's master
    is local, else one per Spark task (then OUTPUT must be storage every task can write)."""
    try:
        from pyspark.ml.torch.distributor import TorchDistributor
    except ImportError as exc:
        raise MissingExtra("pyspark", extra="spark", purpose="--engine spark") from exc
    from ..runners.spark import spark_session

    session, created = spark_session()
    try:
        local = session.sparkContext.master.startswith("local")
        distributor = TorchDistributor(num_processes=config.workers, local_mode=local,
                                       use_gpu=torch.cuda.is_available())
        distributor.run(_torchrun_worker, config, data)
    finally:
        if created:
            session.stop()


def _train_on_ray(config: FinetuneConfig, data: TrainingData) -> None:
    """N Ray Train workers (TorchTrainer, which sets up the process group); a local Ray is
    started (and stopped) when none is running. On a cluster OUTPUT must be shared storage."""
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        raise MissingExtra("ray[train]", extra="ray", purpose="--engine ray") from exc
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(config.workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        trainer = TorchTrainer(
            _ray_worker, train_loop_config={"config": config, "data": data},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=torch.cuda.is_available()),
            run_config=RunConfig(name="imgfeat-finetune",
                                 storage_path=str((Path(config.output) / "ray").resolve())))
        trainer.fit()
    finally:
        if started:
            ray.shutdown()


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    _run_worker(ray.train.get_context().get_world_rank(), loop_config["config"], loop_config["data"], None)


def _torchrun_worker(config: FinetuneConfig, data: TrainingData) -> None:
    """A process started by torchrun (TorchDistributor): rank and rendezvous from its environment."""
    _run_worker(int(os.environ["RANK"]), config, data, "env://")


def _spawned_worker(rank: int, config: FinetuneConfig, data: TrainingData, address: str) -> None:
    _run_worker(rank, config, data, address)


def _run_worker(rank: int, config: FinetuneConfig, data: TrainingData, address: str | None) -> TrainLog:
    world = config.workers
    threads = config.threads or max(1, (os.cpu_count() or 1) // world)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    # Ray Train sets the process group up itself; the other engines leave it to us
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, init_method=address, rank=rank, world_size=world)
    try:
        return _loop(rank, world, config, data)
    finally:
        torch.set_num_threads(previous)
        if own_group:
            torch.distributed.destroy_process_group()


def _loop(rank: int, world: int, config: FinetuneConfig, data: TrainingData) -> TrainLog:
    torch.manual_seed(config.seed)  # the head's initial weights: the same in every worker
    trainee = Trainee(config, len(data.classes))
    optimizer = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    start, losses = 0, []
    state = load_checkpoint(config.output)
    if state is not None:
        config.check_resumable(state["config"])
        trainee.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), [float(v) for v in state["losses"]]
    model: nn.Module = trainee
    if world > 1:
        model = nn.parallel.DistributedDataParallel(trainee)
    model.train()

    spec = input_spec(config.backbone, config.input_size)
    views = 2 if config.mode == "selfsup" else 1
    dataset = ViewDataset(data.reader, data.train, spec, views, data.labels, config.seed, config.max_side,
                          config.detector)
    sampler = StepSampler(len(data.train), config.batch_size, config.steps, config.seed, rank, world, start)
    loader = make_loader(dataset, sampler, config.loader_workers, config.prefetch)
    bar = None
    if rank == 0 and config.progress and start < config.steps:
        from tqdm import tqdm

        bar = tqdm(total=config.steps * config.batch_size, initial=start * config.batch_size, unit="img",
                   desc=f"finetune {config.mode}", dynamic_ncols=True, file=sys.stderr)
    started = time.perf_counter()
    timed_from, timed_images, unreadable = None, 0, 0
    step = start
    for step, batch in enumerate(loader, start=start + 1):
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        unreadable += int(batch["failed"])
        if timed_from is None:  # the first step pays for start-up (loader workers, first batch)
            timed_from = time.perf_counter()
        else:
            timed_images += config.batch_size
        if bar is not None:
            bar.update(config.batch_size)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if rank == 0 and config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            _save_checkpoint(config, trainee, optimizer, step, losses, data.classes)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - (timed_from or started)
    log = TrainLog(steps=step, resumed_from=start, losses=losses,
                   images_per_second=round(timed_images / elapsed, 2) if timed_images else 0.0,
                   seconds=round(time.perf_counter() - started, 2), workers=world, unreadable=unreadable)
    if rank == 0:
        if step > start or state is None:
            _save_checkpoint(config, trainee, optimizer, step, losses, data.classes)
        atomic_write(str(Path(config.output) / TRAIN_LOG), json.dumps(log.__dict__, indent=1).encode())
    if world > 1:
        torch.distributed.barrier()
    return log


def load_trained(config: FinetuneConfig) -> FinetuneNet:
    """The fine-tuned network from OUTPUT's last checkpoint, in eval mode."""
    state = load_checkpoint(config.output)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {config.output}; train first")
    classes = len(state.get("classes") or [])
    trainee = Trainee(config, classes)
    trainee.load_state_dict(state["model"])
    return trainee.net.eval()
