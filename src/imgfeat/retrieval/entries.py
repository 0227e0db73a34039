"""What an index holds of a feature dataset: one entry per row, or one per stored object.

    vector "object"   the main object's vector of each row (`embedding`, `code`)
    vector "image"    the whole image's (`image_embedding`, `image_code`)
    vector "objects"  every object of the `objects` list column (`extract --objects K`): one
                      entry per object, id "<row id>#<j>" (j = its place in the row's list, 0 the
                      main object), its own box, label and score; search merges a row's entries

Every kind streams out of `iter_entries` as the same record batches (id, path, width, height, box, label,
score, crop, embedding, code), so the index code does not care which it holds.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..dataset import READ_BATCH_ROWS, FeatureDataset, crop_kind, embedding_matrix, vector_columns
from ..errors import ConfigError
from ..schema import STATUS_OK

VECTORS = ("object", "image", "objects")
CROPS = {"object": "object", "image": "whole-image", "objects": "objects"}  # vector -> FeatureIndex.crop
OBJECT_ID_SEPARATOR = "#"
META_COLUMNS = ["id", "path", "width", "height", "box", "label", "score", "crop"]


def index_crop(dataset: FeatureDataset, vector: str) -> str:
    """The FeatureIndex.crop of `vector` ("object", "image", "objects" or "auto") over `dataset`.

    Raises:
        ConfigError: an unknown vector, or one the dataset does not hold.
    """
    if vector not in VECTORS + ("auto",):
        raise ConfigError(f"vector must be one of {', '.join(VECTORS)} or auto, got {vector!r}")
    crop = crop_kind(dataset) if vector == "auto" else CROPS[vector]
    check_holds(dataset, crop)
    return crop


def check_holds(dataset: FeatureDataset, crop: str) -> None:
    """Raise ConfigError unless `dataset` holds the vectors of `crop`."""
    if crop != "objects":
        vector_columns(dataset, crop)
    elif "objects" not in dataset.schema.names:
        raise ConfigError(f"{dataset.location} holds no objects column: extract with --objects K (e.g. 3) to "
                          "index every detected object, or index --vector object / image")


def object_entry_id(row_id: str, place: int) -> str:
    """The index id of the object at `place` in a row's objects list."""
    return f"{row_id}{OBJECT_ID_SEPARATOR}{place}"


def row_id(entry_id: str) -> str:
    """The row id of an index entry (itself, unless it is an object entry "<row id>#<j>")."""
    head, sep, tail = entry_id.rpartition(OBJECT_ID_SEPARATOR)
    return head if sep and tail.isdigit() else entry_id


def count_entries(dataset: FeatureDataset, crop: str) -> int:
    """Status-ok rows, or for "objects" the objects they hold."""
    if crop != "objects":
        return dataset.count(STATUS_OK)
    return sum(int(pc.sum(pc.list_value_length(batch.column("objects"))).as_py() or 0)
               for batch in dataset.iter_batches(["objects"], status=STATUS_OK))


def iter_entries(dataset: FeatureDataset, crop: str, codes: bool = True,
                 batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of the entries of the status-ok rows: META_COLUMNS, embedding, and code if `codes`."""
    check_holds(dataset, crop)
    if crop == "objects":
        yield from _object_entries(dataset, codes, batch_rows)
        return
    vector, code = vector_columns(dataset, crop)
    columns = META_COLUMNS + [vector] + ([code] if codes else [])
    for batch in dataset.iter_batches(columns, status=STATUS_OK, batch_rows=batch_rows):
        yield batch.rename_columns(META_COLUMNS + ["embedding"] + (["code"] if codes else []))


def _object_entries(dataset: FeatureDataset, codes: bool, batch_rows: int) -> Iterator[pa.RecordBatch]:
    row_columns = ["id", "path", "width", "height", "crop"]
    for batch in dataset.iter_batches(row_columns + ["objects"], status=STATUS_OK, batch_rows=batch_rows):
        objects = batch.column("objects")
        parents = pc.list_parent_indices(objects)
        found = pc.list_flatten(objects)
        if not len(found):
            continue
        starts = np.asarray(objects.offsets)[:-1]
        parent_rows = parents.to_numpy()
        places = np.arange(len(parent_rows)) - (starts - starts[0])[parent_rows]
        ids = batch.column("id").to_pylist()
        entry = {"id": pa.array([object_entry_id(ids[p], j) for p, j in zip(parent_rows.tolist(), places.tolist())],
                                pa.string())}
        for name in row_columns[1:]:
            entry[name] = batch.column(name).take(parents)
        for name in ("box", "label", "score", "embedding") + (("code",) if codes else ()):
            entry[name] = found.field(name)
        yield pa.RecordBatch.from_pydict({name: entry[name] for name in META_COLUMNS + ["embedding"]
                                          + (["code"] if codes else [])})


def sample_entries(dataset: FeatureDataset, crop: str, dim: int, count: int, size: int,
                   seed: int) -> np.ndarray:
    """A uniform random sample of `size` of the `count` entries' vectors, L2-normalised, read in
    one streaming pass (to train a quantiser)."""
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
    sample = np.empty((size, dim), np.float32)
    seen = filled = 0
    for table in iter_entries(dataset, crop, codes=False):
        n = table.num_rows
        lo, hi = np.searchsorted(chosen, [seen, seen + n])
        if hi > lo:
            sample[filled:filled + hi - lo] = embedding_matrix(table.column("embedding"), dim)[chosen[lo:hi] - seen]
            filled += hi - lo
        seen += n
    sample = sample[:filled]
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    return sample


def best_per_row(scores: Sequence[Sequence[float]], entry_ids: Sequence[Sequence[str | None]],
                 k: int, objects: bool = True) -> tuple[list[float], list[str], list[str]]:
    """Merge the neighbours of one query's objects into its k best rows.

    Args:
        scores, entry_ids: per query object, its neighbours (similarities and entry ids; None
            or NaN: no more).
        k: rows to keep.
        objects: the entries are objects "<row id>#<j>" (False: each entry is a row itself).

    Returns:
        (scores, row ids, the entry that gave each row its score), best first: a row scores
        its best pair of objects.
    """
    best: dict[str, tuple[float, str]] = {}
    for row_scores, row_entries in zip(scores, entry_ids):
        for score, entry in zip(row_scores, row_entries):
            if entry is None or (isinstance(score, float) and np.isnan(score)):
                continue
            score = float(score)
            key = row_id(entry) if objects else entry
            held = best.get(key)
            if held is None or score > held[0]:
                best[key] = (score, entry)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
    return [s for _, (s, _) in ranked], [r for r, _ in ranked], [e for _, (_, e) in ranked]
