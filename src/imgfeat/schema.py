"""The columns of the output table and how rows become an Arrow table.

One row per input, whatever happened to it:

    id         string   stable id of the input (sha1 of its URI, 16 hex digits, unless the source gave one)
    path       string   where the image was read from (path or URI; for table sources, table#row)
    status     string   "ok" or "error"
    error      string   "<kind>: <detail>", null when ok; kinds: empty, not-an-image, corrupt,
                        unsupported, too-large, not-found, read-error, unreachable, timeout
    width      int32    image width in pixels, after EXIF orientation
    height     int32    image height in pixels
    box        [4] f32  x1, y1, x2, y2 of the main object in full-resolution pixels (after EXIF
                        orientation); the whole image when no object was used
    label      string   class of the main object; null when the whole image was embedded
    score      float32  detector score of the main object; null likewise
    crop       string   "object", "full:no-detection" (nothing passed the threshold) or "full:detect-off"
    embedding  [D] f32|f16  L2-normalised vector
    code       binary(bits/8)  packed binary code (big-endian bit order, numpy.packbits)
    image_embedding, image_code   the same of the whole image (equal to embedding/code when the
                        whole image was embedded); absent when extracted with whole_image off
    objects    list<struct<box, label, score, embedding, code>>  up to K detected objects, the
                        main one first (extract --objects K); one whole-image entry (label and
                        score null) when nothing was detected; absent when K is 0 (the default)
    detector, embedder, hasher  string  model names (dictionary-encoded in Parquet)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"
CROP_OBJECT = "object"
CROP_FULL_NO_DETECTION = "full:no-detection"
CROP_FULL_DETECT_OFF = "full:detect-off"

COLUMNS = (  # every column a table can have, in order ("objects" only with --objects K)
    "id", "path", "status", "error", "width", "height", "box", "label", "score", "crop",
    "embedding", "code", "image_embedding", "image_code", "objects", "detector", "embedder", "hasher",
)
# the vector and code columns of each kind of vector a row can hold
VECTOR_COLUMNS = {"object": ("embedding", "code"), "image": ("image_embedding", "image_code")}


def object_type(dim: int, code_bytes: int, dtype: str = "float32") -> pa.ListType:
    """The type of the `objects` column: a list of (box, label, score, embedding, code)."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    return pa.list_(pa.struct([
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("embedding", pa.list_(value_type, dim)),
        pa.field("code", pa.binary(code_bytes)),
    ]))


def output_schema(dim: int, code_bytes: int, dtype: str = "float32", whole_image: bool = True,
                  objects: bool = False) -> pa.Schema:
    """The Arrow schema of the feature table for a given embedding size and code length."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    image = [pa.field("image_embedding", pa.list_(value_type, dim)),
             pa.field("image_code", pa.binary(code_bytes))] if whole_image else []
    if objects:
        image.append(pa.field("objects", object_type(dim, code_bytes, dtype)))
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
        *image,
        pa.field("detector", pa.string()),
        pa.field("embedder", pa.string()),
        pa.field("hasher", pa.string()),
    ])


@dataclass
class ObjectRows:
    """The `objects` of the rows that have features, flattened: `count[i]` entries per row."""

    count: np.ndarray  # (k,) int: objects of each feature row
    box: np.ndarray  # (m, 4) float32, full-resolution pixels
    label: list[str | None]  # None: the whole image (nothing detected)
    score: np.ndarray  # (m,) float32, NaN for the whole image
    embedding: np.ndarray  # (m, dim)
    code: np.ndarray  # (m, code_bytes) uint8


@dataclass
class FeatureRows:
    """The columns of the rows that have features, in batch order (what `Features` computes).

    `index` holds their positions in the batch; every other row of the batch is an error row.
    `score` is NaN and `label` None where the whole image was embedded.
    """

    index: np.ndarray  # (k,) int positions in the batch
    width: np.ndarray  # (k,) int
    height: np.ndarray
    box: np.ndarray  # (k, 4) float32, full-resolution pixels
    label: list[str | None]
    score: np.ndarray  # (k,) float32, NaN: no detection used
    crop: list[str]
    embedding: np.ndarray  # (k, dim)
    code: np.ndarray  # (k, code_bytes) uint8
    image_embedding: np.ndarray | None = None  # (k, dim): the whole image's, when stored
    image_code: np.ndarray | None = None
    objects: ObjectRows | None = None  # with extract --objects K


def _scatter(values: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows `values` placed at `index` in n rows of zeros, and the mask of rows left empty."""
    out = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    out[index] = values
    empty = np.ones(n, dtype=bool)
    empty[index] = False
    return out, empty


def _fixed_list(values: np.ndarray, index: np.ndarray, n: int, arrow_type: pa.FixedSizeListType) -> pa.Array:
    dense, empty = _scatter(values, index, n)
    flat = pa.array(dense.reshape(-1), type=arrow_type.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size, mask=pa.array(empty))


def feature_table(ids: list[str], paths: list[str], errors: list[str | None], rows: FeatureRows,
                  schema: pa.Schema, models: dict[str, str]) -> pa.Table:
    """The output table of a batch: one row per input, the feature rows filled in, the others
    error rows with their reason and nulls. Columns are built from numpy in one go."""
    n = len(ids)
    index = np.asarray(rows.index, dtype=np.int64)
    emb_type: pa.FixedSizeListType = schema.field("embedding").type
    np_dtype = np.float16 if emb_type.value_type == pa.float16() else np.float32
    code_bytes = schema.field("code").type.byte_width

    def scalars(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        dense, empty = _scatter(np.asarray(values), index, n)
        if dense.dtype.kind == "f":
            empty = empty | np.isnan(dense)
        return pa.array(dense, type=arrow_type, mask=empty)

    def strings(values: list[str | None]) -> pa.Array:
        out: list[str | None] = [None] * n
        for i, value in zip(index.tolist(), values):
            out[i] = value
        return pa.array(out, pa.string())

    def vectors(values: np.ndarray) -> pa.Array:
        return _fixed_list(np.asarray(values, np_dtype).reshape(len(index), emb_type.list_size), index, n, emb_type)

    def codes(values: np.ndarray) -> pa.Array:
        dense, empty = _scatter(np.asarray(values, dtype=np.uint8).reshape(len(index), code_bytes), index, n)
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(code_bytes), n, [pa.array(~empty).buffers()[1] if empty.any() else None,
                                       pa.py_buffer(dense.tobytes())])

    def objects(found: ObjectRows) -> pa.Array:
        list_type: pa.ListType = schema.field("objects").type
        struct_type: pa.StructType = list_type.value_type
        m = len(found.score)
        every = np.arange(m)
        entries = pa.StructArray.from_arrays([
            _fixed_list(np.asarray(found.box, np.float32).reshape(m, 4), every, m, struct_type.field("box").type),
            pa.array(found.label, pa.string()),
            pa.array(np.asarray(found.score, np.float32), pa.float32(),
                     mask=np.isnan(np.asarray(found.score, np.float32))),
            _fixed_list(np.asarray(found.embedding, np_dtype).reshape(m, emb_type.list_size), every, m,
                        struct_type.field("embedding").type),
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(code_bytes), m, [
                None, pa.py_buffer(np.ascontiguousarray(found.code, np.uint8).tobytes())]),
        ], fields=list(struct_type))
        counts, empty = _scatter(np.asarray(found.count, np.int32), index, n)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), entries, type=list_type, mask=pa.array(empty))

    status = [STATUS_OK if e is None else STATUS_ERROR for e in errors]
    columns = {
        "id": pa.array(ids, pa.string()),
        "path": pa.array(paths, pa.string()),
        "status": pa.array(status, pa.string()),
        "error": pa.array(errors, pa.string()),
        "width": scalars(np.asarray(rows.width, np.int32), pa.int32()),
        "height": scalars(np.asarray(rows.height, np.int32), pa.int32()),
        "box": _fixed_list(np.asarray(rows.box, np.float32).reshape(-1, 4), index, n, schema.field("box").type),
        "label": strings(rows.label),
        "score": scalars(np.asarray(rows.score, np.float32), pa.float32()),
        "crop": strings(rows.crop),
        "embedding": vectors(rows.embedding),
        "code": codes(rows.code),
        "detector": pa.array([models.get("detector")] * n, pa.string()),
        "embedder": pa.array([models.get("embedder")] * n, pa.string()),
        "hasher": pa.array([models.get("hasher")] * n, pa.string()),
    }
    if "image_embedding" in schema.names:
        columns["image_embedding"] = vectors(rows.image_embedding)
        columns["image_code"] = codes(rows.image_code)
    if "objects" in schema.names:
        columns["objects"] = objects(rows.objects)
    return pa.Table.from_pydict(columns, schema=schema)
