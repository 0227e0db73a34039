"""Reading a feature dataset: one reader for `info`, `index`, `dedup`, `train-hash` and the API.

    dataset = open_features("features/")          # or s3://..., memory://..., a shard, a list
    dataset.dim, dataset.code_bytes, dataset.models, dataset.config
    for batch in dataset.iter_batches(["id", "embedding"], status="ok"): ...
    frame = dataset.to_pandas()                    # nullable integers: error rows stay <NA>

A dataset is the folder `imgfeat extract` wrote (shards + `_manifest.json`), or any Parquet
files with the output schema: `imgfeat.spark.extract(df).write.parquet(...)` and
`imgfeat.ray.extract(ds).write_parquet(...)` write no manifest and store the vectors as
variable-length lists; both read the same here. Without a manifest the model names come from
the rows' `detector`/`embedder`/`hasher` columns and the extraction config is unknown.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .errors import ConfigError, SourceError
from .schema import STATUS_OK, VECTOR_COLUMNS
from .sinks import MANIFEST

READ_BATCH_ROWS = 65536  # rows per Parquet read: bounds memory while streaming
REQUIRED = ("id", "status", "embedding")
INDEX_JSON = "index.json"  # an index folder's description (retrieval/index.py)


def embedding_matrix(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A column of vectors (fixed-size or variable lists of float16/float32, no nulls) as a
    float32 (n, dim) array.

    Raises:
        SourceError: a vector does not have `dim` values.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    if values.size != len(column) * dim:
        raise SourceError(f"embeddings of {values.size // max(len(column), 1)} values where {dim} were "
                          "expected: the rows were made by different embedders")
    return np.ascontiguousarray(values.reshape(len(column), dim), dtype=np.float32)


def code_matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """A column of packed codes (fixed-size or variable binary, no nulls) as uint8 (n, width)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_binary(column.type):
        flat = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * width,
                             offset=column.offset * width)
        return flat.reshape(-1, width).copy()
    return np.frombuffer(b"".join(column.to_pylist()), dtype=np.uint8).reshape(len(column), width).copy()


@dataclass
class FeatureDataset:
    """Parquet files with the output schema, and the manifest when there is one."""

    location: str
    fs: Any
    files: list[str]
    manifest: dict[str, Any] | None
    root: str
    _schema: pa.Schema | None = field(default=None, repr=False)
    _sizes: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            with self.fs.open(self.files[0], "rb") as fh:
                self._schema = pq.read_schema(fh)
        return self._schema

    @property
    def config(self) -> dict[str, Any]:
        """The PipelineConfig dict of the extraction ({} without a manifest)."""
        return dict((self.manifest or {}).get("config") or {})

    @property
    def models(self) -> dict[str, str]:
        """detector, embedder, hasher: from the manifest, else from the first row."""
        if self.manifest and self.manifest.get("models"):
            return dict(self.manifest["models"])
        names = [n for n in ("detector", "embedder", "hasher") if n in self.schema.names]
        for batch in self.iter_batches(names, batch_rows=1):
            return {k: v for k, v in batch.to_pylist()[0].items() if v is not None}
        return {}

    def _find_sizes(self) -> tuple[int, int]:
        emb_type = self.schema.field("embedding").type
        code_type = self.schema.field("code").type if "code" in self.schema.names else None
        dim = emb_type.list_size if pa.types.is_fixed_size_list(emb_type) else 0
        code_bytes = code_type.byte_width if code_type is not None and pa.types.is_fixed_size_binary(code_type) else 0
        if not dim or (code_type is not None and not code_bytes):
            # variable-length lists (Spark's and Ray's writers): sizes from the first ok row
            for batch in self.iter_batches(["embedding"] + (["code"] if code_type else []), status=STATUS_OK,
                                           batch_rows=1):
                row = batch.to_pylist()[0]
                dim = dim or len(row["embedding"])
                code_bytes = code_bytes or (len(row["code"]) if row.get("code") is not None else 0)
                break
        return dim, code_bytes

    @property
    def dim(self) -> int:
        """Embedding size (0 when no row is ok)."""
        if self._sizes is None:
            self._sizes = self._find_sizes()
        return self._sizes[0]

    @property
    def code_bytes(self) -> int:
        """Bytes of the packed code (0 when the rows have none)."""
        if self._sizes is None:
            self._sizes = self._find_sizes()
        return self._sizes[1]

    def iter_batches(self, columns: Sequence[str] | None = None, status: str | None = None,
                     batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream record batches of `columns` (all by default), only rows with `status` if given."""
        wanted = list(columns) if columns is not None else None
        read = wanted if wanted is None or status is None or "status" in wanted else wanted + ["status"]
        for path in self.files:
            with self.fs.open(path, "rb") as fh, pq.ParquetFile(fh) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=read):
                    if status is not None:
                        batch = batch.filter(pc.equal(batch.column("status"), status))
                        if wanted is not None and "status" not in wanted:
                            batch = batch.drop_columns(["status"])
                    if batch.num_rows:
                        yield batch

    def read(self, columns: Sequence[str] | None = None, status: str | None = None) -> pa.Table:
        """All rows (or those with `status`) of `columns` as one table."""
        batches = list(self.iter_batches(columns, status))
        if batches:
            return pa.Table.from_batches(batches)
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        return schema.empty_table()

    def count(self, status: str | None = None) -> int:
        """Rows (with `status`), reading the status column only."""
        total = 0
        for path in self.files:
            with self.fs.open(path, "rb") as fh:
                if status is None:
                    total += pq.ParquetFile(fh).metadata.num_rows
                else:
                    column = pq.read_table(fh, columns=["status"]).column("status")
                    total += int(pc.sum(pc.equal(column, status)).as_py() or 0)
        return total

    def to_pandas(self, columns: Sequence[str] | None = None, status: str | None = None) -> Any:
        """A DataFrame with nullable integer dtypes (width/height of error rows are <NA>, not NaN)."""
        import pandas as pd

        mapping = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
        return self.read(columns, status).to_pandas(types_mapper=mapping.get)


def _parquet_under(fs: Any, root: str) -> list[str]:
    found = fs.find(root)
    return sorted(p for p in found if p.endswith(".parquet")
                  and not any(part.startswith((".", "_")) for part in p[len(root):].split("/") if part))


def open_features(source: str | os.PathLike | Sequence[str | os.PathLike]) -> FeatureDataset:
    """Open a feature dataset: a folder (local or fsspec URL), one Parquet file, or a list of files.

    Args:
        source: the folder `imgfeat extract` wrote (or any folder of Parquet files with the
            output schema), a file, or a list of files (the manifest is read from the folder
            that holds the first).

    Raises:
        SourceError: nothing there, an index folder, or files without the output's columns.
    """
    sources = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    if not sources:
        raise SourceError("no feature files given")
    fs, first = url_to_fs(sources[0])
    files: list[str] = []
    for spec in sources:
        spec_fs, path = url_to_fs(spec)
        if type(spec_fs) is not type(fs):
            raise SourceError("feature files on different filesystems cannot be read together")
        if not spec_fs.exists(path):
            raise SourceError(f"{spec} does not exist (write features with `imgfeat extract`)")
        if spec_fs.isdir(path):
            if spec_fs.exists(posixpath.join(path, INDEX_JSON)):
                raise SourceError(f"{spec} is an index folder; give the feature folder written by "
                                  "`imgfeat extract` (or load the index with imgfeat.load_index)")
            files.extend(_parquet_under(spec_fs, path.rstrip("/")))
        else:
            files.append(path)
    if not files:
        raise SourceError(f"no Parquet files in {', '.join(sources)}: run `imgfeat extract` first")
    root = first.rstrip("/") if fs.isdir(first) else posixpath.dirname(files[0])
    manifest = None
    manifest_path = posixpath.join(root, MANIFEST)
    if fs.exists(manifest_path):
        with fs.open(manifest_path, "rb") as fh:
            try:
                manifest = json.loads(fh.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SourceError(f"{manifest_path} is not valid JSON ({exc})") from exc
    location = sources[0] if len(sources) == 1 else root
    dataset = FeatureDataset(location, fs, files, manifest, root)
    missing = [c for c in REQUIRED if c not in dataset.schema.names]
    if missing:
        raise SourceError(f"{files[0]} lacks the columns {missing}: not imgfeat features")
    emb_type = dataset.schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(emb_type) or pa.types.is_list(emb_type)
            or pa.types.is_large_list(emb_type)):
        raise SourceError(f"{files[0]}: embedding is {emb_type}, expected a list of floats")
    return dataset


VECTORS = ("object", "image")  # the main object's vector, or the whole image's


def crop_kind(dataset: FeatureDataset) -> str:
    """"whole-image" when the features were extracted without detection, else "object"."""
    detect = (dataset.config.get("detect") or {}).get("model")
    if detect is None:
        detect = dataset.models.get("detector")
    return "whole-image" if str(detect).lower() == "none" else "object"


def vector_columns(dataset: FeatureDataset, crop: str) -> tuple[str, str]:
    """The (vector, code) columns of `dataset` holding `crop` ("object" or "whole-image") vectors.

    Raises:
        ConfigError: the dataset has no such vectors.
    """
    extracted = crop_kind(dataset)
    if crop == extracted:
        return VECTOR_COLUMNS["object"]  # the embedding column holds what was extracted
    if crop == "whole-image" and "image_embedding" in dataset.schema.names:
        return VECTOR_COLUMNS["image"]
    if crop == "whole-image":
        raise ConfigError(f"{dataset.location} holds no whole-image vectors (extracted before they were "
                          "stored, or with whole_image off): extract again, or index the object vectors")
    raise ConfigError(f"{dataset.location} holds whole-image vectors only (extracted with --no-detect), not "
                      "main-object vectors: index them as --vector image, or extract with detection")


def sample_vectors(dataset: FeatureDataset, column: str, dim: int, count: int, size: int,
                     seed: int) -> np.ndarray:
    """A uniform random sample of `size` of the `count` status-ok vectors in `column`, L2-normalised,
    read in one streaming pass (to train a quantiser)."""
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
    sample = np.empty((size, dim), np.float32)
    seen = filled = 0
    for batch in dataset.iter_batches([column], status=STATUS_OK):
        n = batch.num_rows
        lo, hi = np.searchsorted(chosen, [seen, seen + n])
        if hi > lo:
            sample[filled:filled + hi - lo] = embedding_matrix(batch.column(column), dim)[chosen[lo:hi] - seen]
            filled += hi - lo
        seen += n
    sample = sample[:filled]
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    return sample
