"""What a fine-tuning run does, in one frozen dataclass: the CLI and `finetune()` map onto it.

The settings travel whole to every training process (they are small and picklable) and are
stored in each checkpoint, so a resumed run can check it is continuing the same training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

MODES = ("selfsup", "supervised")
ENGINES = ("local", "spark", "ray")
BACKBONE_NAMES = ("mobilenet-v2", "test-cnn")  # model.BACKBONES builds them (imports torch)
SUPERVISED_LOSSES = ("softmax", "arcface")
# the settings that must match between a checkpoint and the run resuming it
_SAME_TRAINING = ("backbone", "detector", "cut_at", "freeze_to", "head_dim", "mode", "loss", "batch_size",
                  "lr", "seed", "input_size", "temperature")


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run.

    Args:
        source: the images: folder, glob, list file, Parquet table or fsspec URL (any imgfeat source).
        output: folder for checkpoints, the exported ONNX embedder, the model card and the report.
        mode: "selfsup" (two augmented views of each image pulled together, the rest of the
            batch pushed apart: InfoNCE / NT-Xent) or "supervised" (needs `label_column`).
        backbone: "mobilenet-v2" (ImageNet weights from the registry's weights package) or
            "test-cnn" (a tiny random network for tests).
        cut_at: the last backbone layer kept (e.g. "features.14"); None keeps them all.
        freeze_to: the last backbone layer frozen (e.g. "features.10"); None trains every kept layer.
        detector: train on the main-object crops of this detector (as `extract` crops them), or
            None for whole images.
        head_dim: size of the linear head on the pooled features: the embedding size; 0 for no head.
        loss: supervised only: "softmax" (a classifier head) or "arcface" (additive angular margin).
        label_column: the column of a CSV/Parquet source holding the class or product id.
        id_column, path_column, content_column, include: how to read the source (as `extract`).
        steps: optimiser steps in all (a resumed run continues up to this number).
        batch_size: the global batch (split evenly over `workers`).
        lr: AdamW learning rate; weight_decay its decay.
        temperature: of the InfoNCE loss (selfsup) and the scale 1/temperature of arcface.
        margin: arcface's angular margin (radians).
        input_size: side of the square model input in pixels (None: the backbone's own).
        workers: data-parallel training processes (torch DistributedDataParallel, gloo on CPU).
        engine: "local" (torch.multiprocessing on this machine), "spark" (pyspark's
            TorchDistributor; local mode unless a SparkSession with a cluster master is active)
            or "ray" (Ray Train's TorchTrainer; a local Ray unless one is running).
        threads: torch threads per training process; 0: the cores divided by `workers`. On a
            busy machine fewer threads than cores avoids OpenMP's spinning threads fighting the
            other processes (a tiny CNN's step took 0.83 s on 2 threads, 0.016 s on 1, with
            the 2 cores shared by a dozen processes).
        loader_workers: decode/augment processes per training process (0: in the training loop).
        prefetch: batches each loader worker prepares ahead.
        checkpoint_every: steps between checkpoints (0: only at the end).
        holdout: share of the images kept out of training for the before/after evaluation.
        seed: seed of the split, the data order, the augmentations and the head's initial weights.
        max_side: images are decoded with their long side reduced to about this.
        progress: show a progress bar (images/s, loss).
    """

    source: str
    output: str
    mode: str = "selfsup"
    backbone: str = "mobilenet-v2"
    cut_at: str | None = None
    freeze_to: str | None = None
    detector: str | None = None
    head_dim: int = 128
    loss: str = "softmax"
    label_column: str | None = None
    id_column: str | None = None
    path_column: str | None = None
    content_column: str | None = None
    include: str | None = None
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    margin: float = 0.2
    input_size: int | None = None
    workers: int = 1
    engine: str = "local"
    threads: int = 0
    loader_workers: int = 2
    prefetch: int = 2
    checkpoint_every: int = 50
    holdout: float = 0.2
    seed: int = 0
    max_side: int = 512
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONE_NAMES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "supervised":
            if not self.label_column:
                raise ConfigError("supervised fine-tuning needs a label column (--label-column) in a "
                                  "CSV or Parquet source")
            if self.loss not in SUPERVISED_LOSSES:
                raise ConfigError(f"loss must be one of {', '.join(SUPERVISED_LOSSES)}, got {self.loss!r}")
        for name in ("steps", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.workers:
            raise ConfigError(f"the global batch ({self.batch_size}) must split evenly over "
                              f"{self.workers} workers")
        if self.mode == "selfsup" and self.batch_size < 2:
            raise ConfigError("self-supervised training needs a batch of at least 2 images (negatives)")
        if self.head_dim < 0 or self.threads < 0 or self.loader_workers < 0 or self.checkpoint_every < 0:
            raise ConfigError("head_dim, threads, loader_workers and checkpoint_every must be >= 0")
        if self.prefetch < 1:
            raise ConfigError(f"prefetch must be >= 1, got {self.prefetch}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout is a share of the images in [0, 1), got {self.holdout}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("lr and temperature must be > 0")

    @property
    def local_batch(self) -> int:
        """Images each training process takes per step."""
        return self.batch_size // self.workers

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what checkpoints and the model card record)."""
        return asdict(self)

    def check_resumable(self, recorded: dict[str, Any]) -> None:
        """Raise ConfigError when a checkpoint was written by a different training."""
        changed = [k for k in _SAME_TRAINING if k in recorded and recorded[k] != getattr(self, k)]
        if changed:
            detail = ", ".join(f"{k}: {recorded[k]!r} -> {getattr(self, k)!r}" for k in changed)
            raise ConfigError(f"{self.output} holds a checkpoint of a different training ({detail}); "
                              "use another output folder or the same settings")
