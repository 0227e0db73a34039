"""The columns of the output table and how rows become an Arrow table.

One row per input, whatever happened to it:

    id         string   stable id of the input (sha1 of its URI, 16 hex digits, unless the source gave one)
    path       string   where the image was read from (path or URI; for table sources, table#row)
    status     string   "ok" or "error"
    error      string   "<kind>: <detail>", null when ok; kinds: empty, not-an-image, corrupt,
                        too-large, not-found, read-error
    width      int32    image width in pixels, after EXIF orientation
    height     int32    image height in pixels
    box        [4] f32  x1, y1, x2, y2 of the main object in full-resolution pixels (after EXIF
                        orientation); the whole image when no object was used
    label      string   class of the main object; null when the whole image was embedded
    score      float32  detector score of the main object; null likewise
    crop       string   "object", "full:no-detection" (nothing passed the threshold) or "full:detect-off"
    embedding  [D] f32|f16  L2-normalised vector
    code       binary(bits/8)  packed binary code (big-endian bit order, numpy.packbits)
    detector, embedder, hasher  string  model names (dictionary-encoded in Parquet)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"
CROP_OBJECT = "object"
CROP_FULL_NO_DETECTION = "full:no-detection"
CROP_FULL_DETECT_OFF = "full:detect-off"

COLUMNS = (
    "id", "path", "status", "error", "width", "height", "box", "label", "score", "crop",
    "embedding", "code", "detector", "embedder", "hasher",
)


def output_schema(dim: int, code_bytes: int, dtype: str = "float32") -> pa.Schema:
    """The Arrow schema of the feature table for a given embedding size and code length."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("crop", pa.string()),
        pa.field("embedding", pa.list_(value_type, dim)),
        pa.field("code", pa.binary(code_bytes)),
        pa.field("detector", pa.string()),
        pa.field("embedder", pa.string()),
        pa.field("hasher", pa.string()),
    ])


@dataclass
class Row:
    """One output row before it goes into a table; numpy arrays for the vector columns."""

    id: str
    path: str
    status: str = STATUS_OK
    error: str | None = None
    width: int | None = None
    height: int | None = None
    box: np.ndarray | None = None
    label: str | None = None
    score: float | None = None
    crop: str | None = None
    embedding: np.ndarray | None = None
    code: bytes | None = None


def rows_to_table(rows: list[Row], schema: pa.Schema, models: dict[str, str]) -> pa.Table:
    """Build an Arrow table from rows; vector columns are built from numpy in one go."""
    n = len(rows)
    emb_type: pa.FixedSizeListType = schema.field("embedding").type
    dim = emb_type.list_size
    np_dtype = np.float16 if emb_type.value_type == pa.float16() else np.float32
    code_bytes = schema.field("code").type.byte_width

    def fixed_list(values: list[np.ndarray | None], size: int, dtype: Any, arrow_type: pa.DataType) -> pa.Array:
        flat = np.zeros((n, size), dtype=dtype)
        valid = np.zeros(n, dtype=bool)
        for i, value in enumerate(values):
            if value is not None:
                flat[i] = value
                valid[i] = True
        values_array = pa.array(flat.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(values_array, size, mask=pa.array(~valid))

    columns = {
        "id": pa.array([r.id for r in rows], pa.string()),
        "path": pa.array([r.path for r in rows], pa.string()),
        "status": pa.array([r.status for r in rows], pa.string()),
        "error": pa.array([r.error for r in rows], pa.string()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "box": fixed_list([r.box for r in rows], 4, np.float32, schema.field("box").type),
        "label": pa.array([r.label for r in rows], pa.string()),
        "score": pa.array([r.score for r in rows], pa.float32()),
        "crop": pa.array([r.crop for r in rows], pa.string()),
        "embedding": fixed_list([r.embedding for r in rows], dim, np_dtype, emb_type),
        "code": pa.array([r.code for r in rows], pa.binary(code_bytes)),
        "detector": pa.array([models.get("detector")] * n, pa.string()),
        "embedder": pa.array([models.get("embedder")] * n, pa.string()),
        "hasher": pa.array([models.get("hasher")] * n, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=schema)
