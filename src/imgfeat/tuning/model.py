"""The network being fine-tuned: a pretrained backbone cut at a named layer, frozen up to a
named layer, pooled, and a linear head whose output is the embedding.

    backbone.features[0..cut]  ->  global average pool  ->  Linear(channels, head_dim)

Layers are named as in the backbone's state_dict ("features.0" ... "features.18" for
MobileNetV2). BatchNorm layers keep their pretrained statistics (they run in eval mode even
while training; their scale and shift still learn): fine-tuning batches are small, and
per-sample computations make N data-parallel workers give what one worker gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, ModelUnavailable
from ..models.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: how to build its layer stack and what input it expects."""

    build: Callable[[], nn.Sequential]
    input_size: int
    description: str


def _mobilenet_v2() -> nn.Sequential:
    from ..models import mobilenet_v2

    try:
        return mobilenet_v2.load().features
    except FileNotFoundError as exc:
        raise ModelUnavailable(str(exc)) from exc


def _test_cnn() -> nn.Sequential:
    """Three strided conv-BN-ReLU blocks, random weights (seeded by the caller): for tests."""
    def block(inp: int, out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(inp, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU())
    return nn.Sequential(block(3, 8), block(8, 16), block(16, 32))


BACKBONES: dict[str, Backbone] = {
    "mobilenet-v2": Backbone(_mobilenet_v2, 224, "MobileNetV2 ImageNet1K_V1 (the default embedder)"),
    "test-cnn": Backbone(_test_cnn, 32, "3 conv blocks, random weights (tests)"),
}


def layer_names(features: nn.Sequential) -> list[str]:
    """The names `cut_at` and `freeze_to` accept, in order: "features.0", "features.1", ..."""
    return [f"features.{name}" for name, _ in features.named_children()]


def _position(names: list[str], name: str, option: str) -> int:
    if name not in names:
        raise ConfigError(f"{option}: no layer {name!r}; the backbone's layers are {names[0]} ... {names[-1]}")
    return names.index(name)


class FinetuneNet(nn.Module):
    """images (N, 3, H, W), normalised -> embeddings (N, dim), not L2-normalised.

    Args:
        backbone: a name in BACKBONES.
        cut_at: the last layer kept (None: all).
        freeze_to: the last layer whose weights stay fixed (None: none).
        head_dim: output size of the linear head; 0 for none (the pooled features).

    Raises:
        ConfigError: an unknown backbone or layer name, or freeze_to past cut_at.
        ModelUnavailable: the pretrained weights are not installed.
    """

    def __init__(self, backbone: str, cut_at: str | None = None, freeze_to: str | None = None,
                 head_dim: int = 128):
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        features = BACKBONES[backbone].build()
        names = layer_names(features)
        end = _position(names, cut_at, "cut_at") + 1 if cut_at else len(names)
        self.features = nn.Sequential(*list(features.children())[:end])
        self.frozen = _position(names, freeze_to, "freeze_to") + 1 if freeze_to else 0
        if self.frozen > end:
            raise ConfigError(f"freeze_to ({freeze_to}) lies past cut_at ({cut_at}): nothing would train "
                              "above it")
        for layer in list(self.features.children())[:self.frozen]:
            layer.requires_grad_(False)
        with torch.no_grad():
            channels = self.features.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
        self.channels = int(channels)
        self.head = nn.Linear(self.channels, head_dim) if head_dim else nn.Identity()
        self.dim = head_dim or self.channels

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (no head): the representation before fine-tuning."""
        return torch.flatten(F.adaptive_avg_pool2d(self.features(images), 1), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(images))

    def train(self, mode: bool = True) -> "FinetuneNet":
        super().train(mode)
        for module in self.modules():  # see the module docstring: BatchNorm statistics stay fixed
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def input_spec(backbone: str, input_size: int | None = None) -> InputSpec:
    """The preprocessing of a backbone: square resize, 0..1, ImageNet mean/std, NCHW.

    Recorded in the exported ONNX file, where `imgfeat extract --embedder onnx:PATH` reads it.
    """
    size = input_size or BACKBONES[backbone].input_size
    return InputSpec(size=(size, size), layout="NCHW", scale=1.0 / 255.0, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, interpolation="area")
