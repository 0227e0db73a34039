"""Training objectives over a batch of embeddings.

    info_nce(first, second, t)        self-supervised (SimCLR's NT-Xent): view i of an image must
                                      pick its other view among the 2N - 1 other views
    SoftmaxLoss(dim, classes)         supervised: a linear classifier head, cross-entropy
    ArcFaceLoss(dim, classes, s, m)   supervised metric learning: cosine logits with an additive
                                      angular margin on the true class (ArcFace)

Every loss is a mean over the (global) batch; the training loop gathers the embeddings of all
workers first, so N workers compute the loss of the same batch one worker would.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent loss of two views (N, D) of the same N images (row i of each is one image).

    Returns:
        The mean over the 2N views of the cross-entropy of picking the view's partner.
    """
    views = F.normalize(torch.cat([first, second]), dim=1)
    count = first.shape[0]
    logits = views @ views.T / temperature
    logits = logits.masked_fill(torch.eye(2 * count, dtype=torch.bool, device=logits.device), float("-inf"))
    partners = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(logits.device)
    return F.cross_entropy(logits, partners)


class SoftmaxLoss(nn.Module):
    """A linear classifier on the embeddings, trained with cross-entropy (dropped at export)."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.classifier = nn.Linear(dim, classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(embeddings), labels)


class ArcFaceLoss(nn.Module):
    """ArcFace: logits = scale * cos(angle + margin) for the true class, scale * cos(angle) else.

    Args:
        dim: embedding size.
        classes: number of labels.
        scale: the logit scale (1 / temperature).
        margin: additive angular margin in radians.
    """

    def __init__(self, dim: int, classes: int, scale: float = 10.0, margin: float = 0.2):
        super().__init__()
        self.centres = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.centres)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.centres, dim=1).T
        angle = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
        true_class = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        logits = self.scale * torch.cos(angle + self.margin * true_class)
        return F.cross_entropy(logits, labels)


def supervised_loss(name: str, dim: int, classes: int, temperature: float, margin: float) -> nn.Module:
    """The supervised objective `name` ("softmax" or "arcface") for `classes` labels."""
    if name == "arcface":
        return ArcFaceLoss(dim, classes, scale=1.0 / temperature, margin=margin)
    return SoftmaxLoss(dim, classes)
