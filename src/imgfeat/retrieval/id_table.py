"""The index's id table: string ids <-> FAISS int64 labels, and each row's metadata.

FAISS wants int64 labels: every indexed row gets the next label (never reused). The table is
a pandas DataFrame indexed by id (insertion order) with the label (`faiss_id`) and the columns
search results show: path, width, height, x1, y1, x2, y2, label, score, crop.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import MissingExtra, UnknownId

META_COLUMNS = ("path", "width", "height", "x1", "y1", "x2", "y2", "label", "score", "crop")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover
        raise MissingExtra("pandas", "search", "the index's id table") from exc
    return pandas


def as_id_list(ids: Iterable[str] | str) -> list[str]:
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def unknown_ids(missing: list[str]) -> UnknownId:
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return UnknownId(f"{len(missing)} id(s) not in the index: {shown}")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def meta_columns(batch: Any) -> dict[str, Any]:
    """The metadata columns of a record batch of features, boxes split into x1..y2."""
    boxes = batch.column("box")
    box_values = (boxes.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4) if boxes.null_count == 0 else
                  np.asarray([b if b is not None else [np.nan] * 4 for b in boxes.to_pylist()],
                             dtype=np.float32).reshape(-1, 4))
    return {
        "path": batch.column("path").to_pylist(),
        "width": batch.column("width").to_numpy(zero_copy_only=False),
        "height": batch.column("height").to_numpy(zero_copy_only=False),
        "x1": box_values[:, 0], "y1": box_values[:, 1], "x2": box_values[:, 2], "y2": box_values[:, 3],
        "label": batch.column("label").to_pylist(),
        "score": batch.column("score").to_numpy(zero_copy_only=False),
        "crop": batch.column("crop").to_pylist(),
    }


class IdTable:
    """Ids, labels and metadata of the live rows of an index.

    Args:
        frame: the DataFrame (index id; faiss_id + META_COLUMNS), or None for an empty table.
        next_label: the label the next added row gets.
    """

    def __init__(self, frame: Any = None, next_label: int = 0):
        pd = _pandas()
        if frame is None:
            frame = pd.DataFrame({"faiss_id": np.zeros(0, np.int64)}, index=pd.Index([], dtype=object, name="id"))
        self.frame = frame
        self.next_label = next_label
        self._lookup()

    def _lookup(self) -> None:
        labels = self.labels()
        self._row_of_label = np.full(self.next_label, -1, np.int64)
        self._row_of_label[labels] = np.arange(len(labels))
        self._id_array = self.frame.index.to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.frame)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.frame.index

    def labels(self) -> np.ndarray:
        """Labels of the live rows, in insertion order."""
        return self.frame["faiss_id"].to_numpy().astype(np.int64)

    def new_rows(self, ids: Sequence[str]) -> tuple[np.ndarray, int]:
        """Positions in `ids` of those not in the table (first of duplicates), and how many
        were skipped."""
        pd = _pandas()
        index = pd.Index(list(ids), dtype=object)
        keep = ~index.duplicated(keep="first") & ~index.isin(self.frame.index)
        return np.flatnonzero(keep), int((~keep).sum())

    def append(self, ids: Sequence[str], meta: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        """Add `ids[rows]` with their metadata columns; returns their new labels."""
        pd = _pandas()
        labels = np.arange(self.next_label, self.next_label + len(rows), dtype=np.int64)
        columns: dict[str, Any] = {"faiss_id": labels}
        for name in META_COLUMNS:
            values = meta[name]
            columns[name] = np.asarray(values)[rows] if isinstance(values, np.ndarray) else [values[i] for i in rows]
        frame = pd.DataFrame(columns, index=pd.Index([ids[i] for i in rows], dtype=object, name="id"))
        self.frame = frame if self.frame.empty else pd.concat([self.frame, frame])
        self.next_label += len(rows)
        self._lookup()
        return labels

    def drop(self, ids: Iterable[str] | str, missing_ok: bool = False) -> np.ndarray:
        """Remove ids; returns the labels they had.

        Raises:
            UnknownId: an id is not in the table (unless `missing_ok`).
        """
        ids = list(dict.fromkeys(as_id_list(ids)))
        positions = self.frame.index.get_indexer(ids)
        if (positions < 0).any() and not missing_ok:
            raise unknown_ids([i for i, p in zip(ids, positions) if p < 0])
        positions = positions[positions >= 0]
        labels = np.ascontiguousarray(self.frame["faiss_id"].to_numpy()[positions], dtype=np.int64)
        if len(positions):
            self.frame = self.frame.drop(self.frame.index[positions])
            self._lookup()
        return labels

    def labels_of(self, ids: Iterable[str] | str) -> np.ndarray:
        """The int64 labels of ids.

        Raises:
            UnknownId: an id is not in the table.
        """
        ids = as_id_list(ids)
        positions = self.frame.index.get_indexer(ids)
        if (positions < 0).any():
            raise unknown_ids([i for i, p in zip(ids, positions) if p < 0])
        return self.frame["faiss_id"].to_numpy()[positions].astype(np.int64)

    def ids_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """String ids (object array, None where a label is -1 or not live) of labels."""
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.full(labels.shape, -1, np.int64)
        valid = (labels >= 0) & (labels < self.next_label)
        rows[valid] = self._row_of_label[labels[valid]]
        out = np.full(labels.shape, None, dtype=object)
        out[rows >= 0] = self._id_array[rows[rows >= 0]]
        return out

    def metadata(self, ids: Iterable[str] | str) -> list[dict[str, Any] | None]:
        """Metadata of ids: id, path, box [x1, y1, x2, y2], label, score, width, height, crop;
        None for ids not in the table."""
        ids = as_id_list(ids)
        positions = self.frame.index.get_indexer(ids)
        records = iter(self.frame.iloc[positions[positions >= 0]].to_dict("records"))
        out: list[dict[str, Any] | None] = []
        for item_id, position in zip(ids, positions):
            if position < 0:
                out.append(None)
                continue
            row = next(records)
            box = [row["x1"], row["y1"], row["x2"], row["y2"]]
            out.append({
                "id": item_id, "path": row["path"],
                "box": None if any(_missing(v) for v in box) else [float(v) for v in box],
                "label": None if _missing(row["label"]) else row["label"],
                "score": None if _missing(row["score"]) else float(row["score"]),
                "width": None if _missing(row["width"]) else int(row["width"]),
                "height": None if _missing(row["height"]) else int(row["height"]),
                "crop": None if _missing(row["crop"]) else row["crop"],
            })
        return out
