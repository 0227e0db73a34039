"""The input pipeline of fine-tuning: any imgfeat source -> decoded images -> augmented views
-> batches, prepared by loader worker processes while the model computes.

    open_training_data(config)   list the source once (and its labels), split off held-out images
    ViewDataset[(epoch, index)]  read bytes (storage limits), decode (pixel cap), optionally
                                 crop the detector's main object as `extract` does, then
                                 selfsup: two views, each 1-3 of augment.py's near-duplicate edits
                                 supervised: one such view and the label
    StepSampler                  the global batch of every step, from a seeded permutation per
                                 epoch, sliced per worker: the data order depends on the seed and
                                 the global batch only, never on the number of workers
    make_loader                  a torch DataLoader over both, `loader_workers` processes, prefetch

The views of image i in epoch e come from a generator seeded with (seed, e, i), so a resumed
run and a run on N workers see the same pixels. An unreadable image is replaced in its batch by
the next readable one (and counted), never raised.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..augment import random_view
from ..config import DecodeConfig
from ..decode import decode_image
from ..errors import ConfigError, SourceError
from ..models.preprocess import InputSpec, to_tensor
from ..sources import PATH_COLUMN_NAMES, Item, Source, open_source
from ..sources.tables import parquet_files


@dataclass
class TrainingData:
    """What a training run reads: the source's reader, training and held-out items, labels."""

    reader: Source
    train: list[Item]
    heldout: list[Item]
    labels: dict[str, int] | None  # item id -> class index (supervised)
    classes: list[str]  # class index -> label as written in the table
    description: dict[str, Any]


def _table_columns(spec: str, columns: Sequence[str]) -> dict[str, list[str]]:
    """Columns of a CSV/TSV list or a Parquet table, as stripped strings in row order."""
    import fsspec

    lower = spec.lower()
    if lower.endswith((".csv", ".tsv")):
        with fsspec.open(spec, "rt", encoding="utf-8") as fh:
            reader = csv.DictReader(io.StringIO(fh.read()), delimiter="\t" if lower.endswith(".tsv") else ",")
            rows = list(reader)
            fields = reader.fieldnames or []
        missing = [c for c in columns if c not in fields]
        if missing:
            raise ConfigError(f"{spec}: no column {missing[0]!r}; columns are {fields}")
        return {c: [(row.get(c) or "").strip() for row in rows] for c in columns}
    import pyarrow.parquet as pq

    values: dict[str, list[str]] = {c: [] for c in columns}
    for file in parquet_files(spec):
        with fsspec.open(file, "rb") as fh:
            names = pq.read_schema(fh).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ConfigError(f"{spec}: no column {missing[0]!r}; columns are {names}")
            fh.seek(0)
            table = pq.read_table(fh, columns=list(columns))
        for c in columns:
            values[c] += ["" if v is None else str(v).strip() for v in table.column(c).to_pylist()]
    return values


def _header(spec: str) -> list[str]:
    import fsspec

    if spec.lower().endswith((".csv", ".tsv")):
        with fsspec.open(spec, "rt", encoding="utf-8") as fh:
            first = fh.readline()
        return next(csv.reader([first], delimiter="\t" if spec.lower().endswith(".tsv") else ","), [])
    import pyarrow.parquet as pq

    files = parquet_files(spec)
    if not files:
        raise SourceError(f"no Parquet files under {spec}")
    with fsspec.open(files[0], "rb") as fh:
        return pq.read_schema(fh).names


def open_training_data(config: Any) -> TrainingData:
    """List the source of a FinetuneConfig, attach labels (supervised), split off held-out images.

    Labels join the images by the id column; without one, a CSV or path table's path column
    serves as the id, and a table of image bytes is matched row by row.

    Raises:
        SourceError, ConfigError: the source cannot be listed, lacks the label column, or holds
            fewer images than one global batch.
    """
    spec = os.fspath(config.source)
    id_column = config.id_column
    label_column = config.label_column if config.mode == "supervised" else None
    if label_column and id_column is None:
        header = _header(spec)
        id_column = config.path_column or next((c for c in header if c.lower() in PATH_COLUMN_NAMES), None)
    source = open_source(spec, include=config.include, content_column=config.content_column,
                         path_column=config.path_column, id_column=id_column)
    items = source.list()
    labels: dict[str, int] | None = None
    classes: list[str] = []
    if label_column:
        columns = _table_columns(spec, [id_column, label_column] if id_column else [label_column])
        if id_column:
            by_id = dict(zip(columns[id_column], columns[label_column]))
        else:  # a table of bytes without ids: the source lists its rows in table order
            by_id = {item.id: label for item, label in zip(items, columns[label_column])}
        items = [item for item in items if by_id.get(item.id)]
        classes = sorted({by_id[item.id] for item in items})
        if len(classes) < 2:
            raise ConfigError(f"the label column {label_column!r} holds {len(classes)} distinct labels "
                              "for the listed images; supervised training needs at least 2")
        index = {name: k for k, name in enumerate(classes)}
        labels = {item.id: index[by_id[item.id]] for item in items}
    order = np.random.default_rng(config.seed).permutation(len(items))
    held = int(round(len(items) * config.holdout))
    held = 0 if config.holdout == 0 else max(held, 2)
    heldout = [items[i] for i in sorted(order[:held])]
    train = [items[i] for i in sorted(order[held:])]
    if len(train) < config.batch_size:
        raise SourceError(f"{spec}: {len(train)} training images (after {held} held out) are fewer "
                          f"than one batch ({config.batch_size}); lower --batch-size or --holdout")
    description = dict(source.describe(), train=len(train), heldout=len(heldout))
    if labels is not None:
        description.update(label_column=label_column, classes=len(classes))
    return TrainingData(source.reader(), train, heldout, labels, classes, description)


def read_images(reader: Source, items: Sequence[Item], max_side: int) -> tuple[list[Item], list[np.ndarray]]:
    """Decode `items` (unreadable ones left out) as RGB uint8 arrays."""
    decode = DecodeConfig(max_side=max_side)
    kept, images = [], []
    for result in reader.read(list(items), decode.max_bytes):
        if result.content is None:
            continue
        decoded = decode_image(result.content, decode)
        if decoded.error is None:
            kept.append(result.item)
            images.append(decoded.image)
    return kept, images


class ViewDataset(Dataset):
    """Key (epoch, index) -> the training views of `items[index]`.

    Args:
        reader: the source's reader (picklable: it travels to loader workers).
        items: the training items.
        spec: the model's preprocessing.
        views: 2 for self-supervised pairs, 1 for supervised.
        labels: item id -> class index, or None.
        seed: with the epoch and index, seeds the augmentations.
        max_side: decode size limit.
        detector: views from the main object this detector finds (the pipeline's threshold,
            selection and margin), or None for whole images.
    """

    def __init__(self, reader: Source, items: list[Item], spec: InputSpec, views: int,
                 labels: dict[str, int] | None, seed: int, max_side: int, detector: str | None = None):
        self.reader, self.items, self.spec, self.views = reader, items, spec, views
        self.labels, self.seed, self.detector = labels, seed, detector
        self.decode = DecodeConfig(max_side=max_side)
        self._model: Any = None
        self._boxes: dict[int, tuple[int, int, int, int] | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _model=None, _boxes={})

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, index: int) -> np.ndarray | None:
        result = self.reader.read([self.items[index]], self.decode.max_bytes)[0]
        if result.content is None:
            return None
        decoded = decode_image(result.content, self.decode)
        if decoded.error is not None:
            return None
        return decoded.image if self.detector is None else self._main_object(index, decoded.image)

    def _main_object(self, index: int, image: np.ndarray) -> np.ndarray:
        """The detector's main object with the pipeline's margin (the whole image when it finds
        none), as `extract` crops it; boxes are cached per loader worker."""
        from ..config import DetectConfig
        from ..crop import crop, expand_box, select_main

        settings = DetectConfig(model=self.detector)
        if index not in self._boxes:
            if self._model is None:  # built in the loader worker on first use, not pickled to it
                from ..models import create_detector

                self._model = create_detector(self.detector, threads=1)
            detections = self._model([image])[0]
            main = select_main(detections, settings.score_threshold, settings.select)
            self._boxes[index] = None if main is None else expand_box(
                detections[main], settings.margin, image.shape[1], image.shape[0])
        window = self._boxes[index]
        return image if window is None else crop(image, window)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from PIL import Image

        epoch, index = key
        # an unreadable image is replaced by the next readable one: every worker's share of the
        # batch keeps its size (the gathered batch needs equal shares), and `failed` counts it
        for failed in range(len(self.items)):
            image = self._image((index + failed) % len(self.items))
            if image is not None:
                break
        else:
            raise SourceError("none of the training images can be read or decoded")
        index = (index + failed) % len(self.items)
        rng = np.random.default_rng([self.seed, epoch, index])
        views = [np.asarray(random_view(Image.fromarray(image), rng), dtype=np.uint8) for _ in range(self.views)]
        sample: dict[str, Any] = {"views": [torch.from_numpy(to_tensor([v], self.spec)[0]) for v in views],
                                  "index": index, "failed": failed > 0}
        if self.labels is not None:
            sample["label"] = self.labels[self.items[index].id]
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch's views (view0, view1, ...), indices and labels; `failed` counts the
    unreadable images replaced."""
    batch: dict[str, Any] = {"failed": sum(s["failed"] for s in samples)}
    for k in range(len(samples[0]["views"])):
        batch[f"view{k}"] = torch.stack([s["views"][k] for s in samples])
    batch["index"] = torch.tensor([s["index"] for s in samples])
    if "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples])
    return batch


class StepSampler(Sampler):
    """For each step from `start` to `steps`: this worker's share of the global batch.

    Epoch e visits the items in the order of a permutation seeded with (seed, e); a step takes
    the next `global_batch` of them (the tail of an epoch that does not fill a batch is skipped)
    and worker `rank` of `world` takes the rank-th slice.
    """

    def __init__(self, count: int, global_batch: int, steps: int, seed: int, rank: int = 0,
                 world: int = 1, start: int = 0):
        if count < global_batch:
            raise ConfigError(f"{count} images are fewer than one batch ({global_batch})")
        self.count, self.global_batch, self.steps, self.seed = count, global_batch, steps, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_epoch = count // global_batch

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch_keys(self, step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        chosen = order[position * self.global_batch:(position + 1) * self.global_batch]
        local = len(chosen) // self.world
        return [(epoch, int(i)) for i in chosen[self.rank * local:(self.rank + 1) * local]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch_keys(step)


def _quiet_worker(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # the loader workers are the parallelism; OpenCV's own pool would fight them


def make_loader(dataset: ViewDataset, sampler: StepSampler, loader_workers: int, prefetch: int) -> DataLoader:
    """A DataLoader that prepares the next `prefetch` batches per worker while the model trains."""
    options: dict[str, Any] = {}
    if loader_workers:
        # forkserver, not fork: a process that already runs threads (onnxruntime, OpenVINO, a JVM,
        # torch's own pools) and forks can leave the child waiting forever on a lock one of those
        # threads held (it hung the test suite); forkserver forks from a clean single-threaded server
        options = {"num_workers": loader_workers, "prefetch_factor": prefetch, "persistent_workers": False,
                   "worker_init_fn": _quiet_worker, "multiprocessing_context": "forkserver"}
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **options)
