"""Before/after scores on the held-out images, with the project's near-duplicate benchmark.

    neardup(encode, names, photos)          evaluate.build_benchmark on the held-out photos (each
                                            through every augment.py edit, random crops as
                                            distractors): top-1 and mAP of cosine ranking
    label_retrieval(encode, images, labels) each held-out image queries the others: mAP where
                                            the relevant items share its label (supervised)

`encode` maps a list of RGB images to L2-normalised vectors: "before" is the pretrained backbone
(cut, pooled, no head), "after" the fine-tuned embedder.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..evaluate import build_benchmark, cosine_distances, mean_average_precision, rank_order
from ..models.preprocess import InputSpec, l2_normalize, to_tensor

Encode = Callable[[list[np.ndarray]], np.ndarray]


def torch_encoder(forward: Callable[[torch.Tensor], torch.Tensor], spec: InputSpec, batch_size: int = 32) -> Encode:
    """An Encode running `forward` (e.g. `net.pooled` or `net`) on batches prepared with `spec`."""
    def encode(images: list[np.ndarray]) -> np.ndarray:
        vectors = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(to_tensor(images[start:start + batch_size], spec))
                vectors.append(forward(batch).numpy())
        return l2_normalize(np.concatenate(vectors))
    return encode


def neardup(encode: Encode, names: list[str], photos: list[np.ndarray], seed: int = 0,
            distractors_per_photo: int = 3) -> dict[str, Any]:
    """Near-duplicate top-1 and mAP of `encode` on a benchmark built from `photos`."""
    benchmark = build_benchmark(names, photos, distractors_per_photo, seed)
    distances = cosine_distances(encode(benchmark.queries), encode(benchmark.database))
    relevant = benchmark.relevant
    order = rank_order(distances, seed)
    first = np.take_along_axis(relevant, order[:, :1], axis=1)[:, 0]
    return {"top1": float(first.mean()), "map": mean_average_precision(distances, relevant, seed),
            "queries": len(benchmark.queries), "database": len(benchmark.database)}


def label_retrieval(encode: Encode, images: list[np.ndarray], labels: list[int], seed: int = 0) -> dict[str, Any]:
    """mAP and top-1 of each image querying the others, relevant = the same label.

    Queries whose label no other image shares are left out (nothing to find)."""
    labels_array = np.asarray(labels)
    vectors = encode(images)
    distances = cosine_distances(vectors, vectors)
    np.fill_diagonal(distances, np.inf)  # an image does not retrieve itself
    relevant = labels_array[:, None] == labels_array[None, :]
    np.fill_diagonal(relevant, False)
    queries = relevant.any(axis=1)
    if not queries.any():
        return {"map": None, "top1": None, "queries": 0}
    distances, relevant = distances[queries], relevant[queries]
    order = rank_order(distances, seed)
    first = np.take_along_axis(relevant, order[:, :1], axis=1)[:, 0]
    return {"map": mean_average_precision(distances, relevant, seed), "top1": float(first.mean()),
            "queries": int(queries.sum())}


def before_after(before: Encode, after: Encode, names: list[str], images: list[np.ndarray],
                 labels: list[int] | None, seed: int = 0) -> dict[str, Any]:
    """Every score for both encoders, and the change (after - before)."""
    report: dict[str, Any] = {"heldout_images": len(images)}
    if len(images) < 2:
        report["skipped"] = "fewer than 2 readable held-out images"
        return report
    for name, encode in (("before", before), ("after", after)):
        scores = {"neardup": neardup(encode, names, images, seed)}
        if labels is not None:
            scores["labels"] = label_retrieval(encode, images, labels, seed)
        report[name] = scores
    report["change"] = {
        f"{bench}_{metric}": round(report["after"][bench][metric] - report["before"][bench][metric], 4)
        for bench in report["after"] for metric in ("top1", "map")
        if report["after"][bench].get(metric) is not None}
    return report
