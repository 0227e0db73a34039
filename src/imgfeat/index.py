"""A FAISS index over a feature dataset: float vectors, binary codes, ids and metadata.

    index = FeatureIndex.build("features/")            # kind "auto": exact below 100k vectors
    scores, ids = index.search(vectors, k=10)          # cosine similarity, string ids
    dists, ids = index.search_codes(codes, k=10)       # Hamming distance on the packed codes
    index.add("more-features/"); index.remove(["a1b2..."]); index.save("index/")

Only rows with status "ok" are indexed. FAISS wants int64 labels: every indexed row gets the
next label (never reused), and a table maps labels to the string ids and the metadata the
search results show (path, box, label, ...). On disk an index is a folder:

    INDEX/index.json      kind, dim, models, the extraction config, search parameters
    INDEX/vectors.faiss   the float index (inner product on L2-normalised vectors = cosine)
    INDEX/codes.faiss     the binary index (exact Hamming; brute force is fast on packed bits)
    INDEX/ids.parquet     faiss_id, id, path, width, height, x1, y1, x2, y2, label, score, crop
    INDEX/removed.npy     labels removed from an HNSW graph (HNSW cannot delete; they are
                          filtered out at search time and dropped when the graph is rebuilt)

Kinds of float index:
    flat   IndexFlatIP: exact; the default below 100 000 vectors
    hnsw   IndexHNSWFlat: graph, fast and accurate, holds the full vectors (auto up to ~8 GiB)
    ivf    IndexIVFFlat: inverted lists of full vectors; exact scores, tunable nprobe
    ivfpq  IndexIVFPQ: compressed (about 64 bytes per vector); auto when the vectors would not fit
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError, MissingExtra, OutputError, SourceError, UnknownId
from .schema import STATUS_OK
from .sinks import MANIFEST

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
VECTORS_FILE = "vectors.faiss"
CODES_FILE = "codes.faiss"
IDS_FILE = "ids.parquet"
REMOVED_FILE = "removed.npy"

FLAT_MAX_VECTORS = 100_000  # auto: exact search below this (one query over 100k x 1280-d: ~10 ms)
HNSW_MAX_BYTES = 8 << 30  # auto: HNSW while the float vectors fit in this; IVF-PQ above
MIN_TRAIN_VECTORS = 1000  # ivf/ivfpq need this many vectors to train their quantisers
HNSW_REBUILD_RATIO = 0.3  # rebuild an HNSW graph once this share of its vectors is removed
READ_BATCH_ROWS = 65536  # rows per Parquet read: bounds memory while building

META_COLUMNS = ("path", "width", "height", "x1", "y1", "x2", "y2", "label", "score", "crop")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in the search extra
        raise MissingExtra("faiss-cpu", "search", "indexing and search") from exc
    return faiss


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover
        raise MissingExtra("pandas", "search", "the index's id table") from exc
    return pandas


# --- reading feature datasets ---------------------------------------------------------------

@dataclass
class FeatureFiles:
    """The Parquet shards of a feature dataset and its manifest."""

    files: list[str]
    manifest: dict[str, Any]
    root: str

    @property
    def models(self) -> dict[str, str]:
        return dict(self.manifest.get("models") or {})

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})


def feature_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> FeatureFiles:
    """Resolve a feature folder, one shard, or a list of shards to files plus the manifest.

    Args:
        source: the folder `imgfeat extract` wrote, a `part-*.parquet` file, or a list of them
            (the manifest is read from the folder that holds the first file).

    Raises:
        SourceError: nothing to read, or no `_manifest.json` beside the shards.
    """
    sources = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    if not sources:
        raise SourceError("no feature shards given")
    files: list[str] = []
    for path in sources:
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, INDEX_JSON)):
                raise SourceError(f"{path} is an index folder; give the feature folder written by "
                                  "`imgfeat extract` (or load the index with FeatureIndex.load)")
            files.extend(sorted(glob.glob(os.path.join(path, "part-*.parquet"))))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SourceError(f"{path} does not exist")
    if not files:
        raise SourceError(f"no part-*.parquet shards in {', '.join(sources)}: run `imgfeat extract` first")
    root = sources[0] if os.path.isdir(sources[0]) else os.path.dirname(os.path.abspath(files[0]))
    manifest_path = os.path.join(root, MANIFEST)
    if not os.path.exists(manifest_path):
        raise SourceError(f"{root} has no {MANIFEST}: not a feature folder written by `imgfeat extract`")
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    return FeatureFiles(files, manifest, os.path.abspath(root))


def _schema_sizes(path: str) -> tuple[int, int]:
    """(embedding dim, code bytes) of a shard, from its Parquet schema."""
    schema = pq.read_schema(path)
    if "embedding" not in schema.names:
        raise SourceError(f"{path} has no embedding column: not an imgfeat feature shard")
    emb_type = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type):
        raise SourceError(f"{path}: embedding is {emb_type}, expected a fixed-size list")
    code_bytes = 0
    if "code" in schema.names and pa.types.is_fixed_size_binary(schema.field("code").type):
        code_bytes = schema.field("code").type.byte_width
    return emb_type.list_size, code_bytes


def _embeddings(column: pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list column (float16 or float32) as a float32 (n, dim) array."""
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def _codes(column: pa.Array, width: int) -> np.ndarray:
    """A fixed-size-binary column as a uint8 (n, width) array."""
    column = pa.concat_arrays([column]) if isinstance(column, pa.ChunkedArray) else column
    buffer = column.buffers()[1]
    flat = np.frombuffer(buffer, dtype=np.uint8, count=len(column) * width, offset=column.offset * width)
    return flat.reshape(-1, width).copy()


@dataclass
class FeatureBatch:
    """Status-ok rows of one read: ids, vectors, codes and the metadata columns."""

    ids: list[str]
    vectors: np.ndarray
    codes: np.ndarray | None
    meta: dict[str, Any]  # column name -> numpy array / list, aligned with ids


def iter_feature_batches(files: Sequence[str], dim: int, code_bytes: int,
                         batch_rows: int = READ_BATCH_ROWS, with_meta: bool = True,
                         with_codes: bool = True) -> Iterator[FeatureBatch]:
    """Stream the status-ok rows of feature shards in bounded batches.

    Raises:
        ConfigError: a shard's embedding size differs from `dim`.
    """
    columns = ["id", "status", "embedding"] + (["code"] if with_codes and code_bytes else [])
    if with_meta:
        columns += ["path", "width", "height", "box", "label", "score", "crop"]
    for path in files:
        shard_dim, shard_code_bytes = _schema_sizes(path)
        if shard_dim != dim:
            raise ConfigError(f"{path} holds {shard_dim}-d embeddings but this index holds {dim}-d ones: "
                              "the features were made with another embedder; build a separate index")
        if with_codes and code_bytes and shard_code_bytes != code_bytes:
            raise ConfigError(f"{path} holds {shard_code_bytes * 8}-bit codes but this index holds "
                              f"{code_bytes * 8}-bit ones: extract with the same --code-bits/--hash")
        with pq.ParquetFile(path) as parquet:
            for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                ok = pc.equal(record_batch.column("status"), STATUS_OK)
                record_batch = record_batch.filter(ok)
                if record_batch.num_rows == 0:
                    continue
                vectors = _embeddings(record_batch.column("embedding"), dim)
                codes = (_codes(record_batch.column("code"), code_bytes)
                         if with_codes and code_bytes else None)
                meta: dict[str, Any] = {}
                if with_meta:
                    boxes = record_batch.column("box")
                    box_values = (boxes.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
                                  if boxes.null_count == 0 else
                                  np.asarray([b if b is not None else [np.nan] * 4 for b in boxes.to_pylist()],
                                             dtype=np.float32).reshape(-1, 4))
                    meta = {
                        "path": record_batch.column("path").to_pylist(),
                        "width": record_batch.column("width").to_numpy(zero_copy_only=False),
                        "height": record_batch.column("height").to_numpy(zero_copy_only=False),
                        "x1": box_values[:, 0], "y1": box_values[:, 1],
                        "x2": box_values[:, 2], "y2": box_values[:, 3],
                        "label": record_batch.column("label").to_pylist(),
                        "score": record_batch.column("score").to_numpy(zero_copy_only=False),
                        "crop": record_batch.column("crop").to_pylist(),
                    }
                yield FeatureBatch(record_batch.column("id").to_pylist(), vectors, codes, meta)


def count_ok_rows(files: Sequence[str]) -> int:
    """Rows with status "ok" over the shards (reads only the status column)."""
    total = 0
    for path in files:
        status = pq.read_table(path, columns=["status"]).column("status")
        total += int(pc.sum(pc.equal(status, STATUS_OK)).as_py() or 0)
    return total


def choose_kind(count: int, dim: int) -> str:
    """The float index "auto" picks for `count` vectors of `dim` floats."""
    if count < FLAT_MAX_VECTORS:
        return "flat"
    if count * dim * 4 <= HNSW_MAX_BYTES:
        return "hnsw"
    return "ivfpq"


def _default_params(kind: str, count: int, dim: int) -> dict[str, Any]:
    """Build and search parameters for a kind at a size (recorded in index.json)."""
    if kind == "hnsw":
        return {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128}
    if kind in ("ivf", "ivfpq"):
        nlist = int(min(65536, max(16, round(math.sqrt(max(count, 1))))))
        nlist = min(nlist, max(1, count // 39))  # faiss wants ~39 training points per list
        params: dict[str, Any] = {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}
        if kind == "ivfpq":
            params["pq_m"] = next(m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
                                  if dim % m == 0 and dim // m >= 2 or m == 1)
            params["pq_bits"] = 8  # 256 centroids per sub-quantiser (fewer loses too much recall)
        return params
    return {}


def _new_float_index(kind: str, dim: int, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params["ef_construction"]
        return faiss.IndexIDMap2(inner)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["pq_bits"],
                                 faiss.METRIC_INNER_PRODUCT)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by label
    return index


def _new_binary_index(code_bytes: int) -> Any:
    faiss = _faiss()
    return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(code_bytes * 8))


def _as_id_list(ids: Iterable[str] | str) -> list[str]:
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def _unknown(missing: list[str]) -> UnknownId:
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return UnknownId(f"{len(missing)} id(s) not in the index: {shown}")


# --- the index ------------------------------------------------------------------------------

class FeatureIndex:
    """Float and binary FAISS indexes over feature rows, with string ids and metadata.

    Build with `FeatureIndex.build(features_dir)` or `FeatureIndex.load(folder)`; the
    constructor is internal.

    Attributes:
        kind: "flat", "hnsw", "ivf" or "ivfpq" (the float index).
        dim: embedding size.
        code_bytes: bytes of the binary code (0 when the features have no codes).
        models: {"detector", "embedder", "hasher"} names from the features' manifest.
        config: the PipelineConfig dict the features were extracted with.
        params: search parameters (`ef_search` for hnsw, `nprobe` for ivf/ivfpq); change
            them on the object to trade speed for recall.
    """

    def __init__(self, kind: str, dim: int, code_bytes: int, models: dict[str, str],
                 config: dict[str, Any], params: dict[str, Any], float_index: Any, binary_index: Any,
                 meta: Any, next_label: int, removed: np.ndarray | None = None,
                 sources: list[str] | None = None, created: str | None = None):
        self.kind = kind
        self.dim = dim
        self.code_bytes = code_bytes
        self.models = dict(models)
        self.config = dict(config)
        self.params = dict(params)
        self.sources = list(sources or [])
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._float = float_index
        self._binary = binary_index
        self._meta = meta  # DataFrame indexed by id: faiss_id + META_COLUMNS, insertion order
        self._next_label = next_label
        self._removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, np.int64)
        self._selector: Any = None
        self._reindex()

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, features: str | os.PathLike | Sequence[str | os.PathLike], kind: str = "auto", *,
              codes: bool = True, params: dict[str, Any] | None = None,
              batch_rows: int = READ_BATCH_ROWS, seed: int = 0) -> "FeatureIndex":
        """Index the status-ok rows of a feature dataset.

        Args:
            features: the folder written by `imgfeat extract`, or shard files.
            kind: "auto" (flat below 100k vectors, hnsw while the vectors fit in 8 GiB, else
                ivfpq), or one of "flat", "hnsw", "ivf", "ivfpq".
            codes: also index the binary codes (Hamming search).
            params: override build/search parameters (hnsw_m, ef_construction, ef_search,
                nlist, nprobe, pq_m, pq_bits).
            batch_rows: rows read at a time (bounds memory).
            seed: seed of the training sample (ivf/ivfpq).

        Returns:
            FeatureIndex

        Raises:
            SourceError: not a feature dataset. ConfigError: unknown kind, or too few vectors
            to train an ivf/ivfpq index.
        """
        if kind != "auto" and kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
        dataset = feature_files(features)
        dim, code_bytes = _schema_sizes(dataset.files[0])
        code_bytes = code_bytes if codes else 0
        count = count_ok_rows(dataset.files)
        kind = choose_kind(count, dim) if kind == "auto" else kind
        chosen = {**_default_params(kind, count, dim), **(params or {})}
        float_index = _new_float_index(kind, dim, chosen)
        if kind in ("ivf", "ivfpq"):
            if count < MIN_TRAIN_VECTORS:
                raise ConfigError(f"a {kind} index needs at least {MIN_TRAIN_VECTORS} vectors to train, "
                                  f"these features have {count}: use --kind flat")
            sample = _training_sample(dataset.files, dim, count, min(count, chosen["nlist"] * 64), seed)
            float_index.train(sample)
        pd = _pandas()
        meta = pd.DataFrame({"faiss_id": np.zeros(0, np.int64)}, index=pd.Index([], dtype=object, name="id"))
        index = cls(kind, dim, code_bytes, dataset.models, dataset.config, chosen, float_index,
                    _new_binary_index(code_bytes) if code_bytes else None, meta, 0)
        index._add_dataset(dataset, batch_rows)
        return index

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureIndex":
        """Open an index folder written by `save`.

        Raises:
            SourceError: the folder is not an imgfeat index.
        """
        faiss = _faiss()
        pd = _pandas()
        path = os.fspath(path)
        info_path = os.path.join(path, INDEX_JSON)
        if not os.path.exists(info_path):
            raise SourceError(f"{path} is not an index folder (no {INDEX_JSON}): build one with "
                              "`imgfeat index FEATURES -o INDEX`")
        with open(info_path) as fh:
            info = json.load(fh)
        if info.get("format_version") != FORMAT_VERSION:
            raise SourceError(f"{path}: index format {info.get('format_version')} is not {FORMAT_VERSION}; "
                              "rebuild it with this version of imgfeat")
        float_index = faiss.read_index(os.path.join(path, VECTORS_FILE))
        binary_index = None
        if info.get("code_bytes"):
            binary_index = faiss.read_index_binary(os.path.join(path, CODES_FILE))
        table = pd.read_parquet(os.path.join(path, IDS_FILE))
        meta = table.set_index("id")
        removed_path = os.path.join(path, REMOVED_FILE)
        removed = np.load(removed_path) if os.path.exists(removed_path) else None
        return cls(info["kind"], info["dim"], info.get("code_bytes", 0), info.get("models") or {},
                   info.get("config") or {}, info.get("params") or {}, float_index, binary_index,
                   meta, info["next_label"], removed, info.get("sources"), info.get("created"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index folder; an existing index there is replaced atomically.

        Raises:
            OutputError: `path` exists and is not an index folder (nothing is deleted).
        """
        faiss = _faiss()
        path = os.path.abspath(os.fspath(path))
        if os.path.exists(path) and not (os.path.isdir(path) and (
                os.path.exists(os.path.join(path, INDEX_JSON)) or not os.listdir(path))):
            raise OutputError(f"{path} exists and is not an index folder: choose another path")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            faiss.write_index(self._float, os.path.join(tmp, VECTORS_FILE))
            if self._binary is not None:
                faiss.write_index_binary(self._binary, os.path.join(tmp, CODES_FILE))
            self._meta.reset_index().to_parquet(os.path.join(tmp, IDS_FILE), index=False, compression="zstd")
            if len(self._removed):
                np.save(os.path.join(tmp, REMOVED_FILE), self._removed)
            with open(os.path.join(tmp, INDEX_JSON), "w") as fh:
                json.dump(self.describe(), fh, indent=2, sort_keys=True)
            old = None
            if os.path.exists(path):
                old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old:
                shutil.rmtree(old)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)

    def describe(self) -> dict[str, Any]:
        """What index.json holds: kind, sizes, models, config, parameters."""
        return {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
            "code_bytes": self.code_bytes, "metric": "inner_product (cosine on L2-normalised vectors)",
            "count": len(self), "next_label": self._next_label, "models": self.models,
            "config": self.config, "params": self.params, "sources": self.sources,
            "created": self.created, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    # --- changing it ----------------------------------------------------------------------

    def add(self, features: str | os.PathLike | Sequence[str | os.PathLike],
            batch_rows: int = READ_BATCH_ROWS) -> int:
        """Add the status-ok rows of more feature shards, without rebuilding.

        Ids already in the index are skipped (so adding the same folder twice is harmless).
        An ivf/ivfpq index keeps the quantiser it was trained with.

        Args:
            features: a feature folder, or shard files (the manifest is read beside them).

        Returns:
            The number of rows added.

        Raises:
            ConfigError: the features were made with another embedder or hasher, or their
                vectors/codes have another size.
        """
        dataset = feature_files(features)
        for role in ("embedder", "hasher"):
            mine, theirs = self.models.get(role), dataset.models.get(role)
            if role == "hasher" and not self.code_bytes:
                continue
            if mine and theirs and mine != theirs:
                raise ConfigError(f"{dataset.root} was made with {role} {theirs!r} but this index holds "
                                  f"{role} {mine!r} features: extract with the same model or build another index")
        return self._add_dataset(dataset, batch_rows)

    def _add_dataset(self, dataset: FeatureFiles, batch_rows: int) -> int:
        pd = _pandas()
        added = 0
        for batch in iter_feature_batches(dataset.files, self.dim, self.code_bytes, batch_rows):
            ids = pd.Index(batch.ids, dtype=object)
            keep = ~ids.duplicated(keep="first") & ~ids.isin(self._meta.index)
            if not keep.any():
                continue
            keep_rows = np.flatnonzero(keep)
            labels = np.arange(self._next_label, self._next_label + len(keep_rows), dtype=np.int64)
            vectors = batch.vectors[keep_rows]
            _faiss().normalize_L2(vectors)  # float16 storage and rounding leave norms slightly off 1
            self._float.add_with_ids(vectors, labels)
            if self._binary is not None:
                self._binary.add_with_ids(np.ascontiguousarray(batch.codes[keep_rows]), labels)
            columns = {"faiss_id": labels}
            for name in META_COLUMNS:
                values = batch.meta[name]
                columns[name] = (np.asarray(values)[keep_rows] if isinstance(values, np.ndarray)
                                 else [values[i] for i in keep_rows])
            frame = pd.DataFrame(columns, index=pd.Index([batch.ids[i] for i in keep_rows], dtype=object, name="id"))
            self._meta = frame if self._meta.empty else pd.concat([self._meta, frame])
            self._next_label += len(keep_rows)
            added += len(keep_rows)
        if dataset.root not in self.sources:
            self.sources.append(dataset.root)
        self._reindex()
        return added

    def remove(self, ids: Iterable[str] | str, missing_ok: bool = False) -> int:
        """Delete ids from the index.

        Args:
            ids: the ids to delete.
            missing_ok: ignore ids that are not there instead of raising.

        Returns:
            The number of ids removed.

        Raises:
            UnknownId: an id is not in the index (unless `missing_ok`).
        """
        faiss = _faiss()
        ids = list(dict.fromkeys(_as_id_list(ids)))
        positions = self._meta.index.get_indexer(ids)
        if (positions < 0).any() and not missing_ok:
            raise _unknown([i for i, p in zip(ids, positions) if p < 0])
        positions = positions[positions >= 0]
        if not len(positions):
            return 0
        labels = np.ascontiguousarray(self._meta["faiss_id"].to_numpy()[positions], dtype=np.int64)
        if self.kind == "hnsw":
            self._removed = np.union1d(self._removed, labels)  # HNSW cannot delete: filter at search
        elif self.kind in ("ivf", "ivfpq"):
            self._float.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))
        else:
            self._float.remove_ids(faiss.IDSelectorBatch(labels))
        if self._binary is not None:
            self._binary.remove_ids(faiss.IDSelectorBatch(labels))
        self._meta = self._meta.drop(self._meta.index[positions])
        self._reindex()
        if self.kind == "hnsw" and len(self._removed) > HNSW_REBUILD_RATIO * max(1, self._float.ntotal):
            self._rebuild_hnsw()
        return len(labels)

    def _rebuild_hnsw(self) -> None:
        """A fresh graph of the live vectors (drops the removed ones for good)."""
        labels = self._meta["faiss_id"].to_numpy().astype(np.int64)
        fresh = _new_float_index("hnsw", self.dim, self.params)
        for start in range(0, len(labels), READ_BATCH_ROWS):
            chunk = np.ascontiguousarray(labels[start:start + READ_BATCH_ROWS])
            fresh.add_with_ids(self._float.reconstruct_batch(chunk), chunk)
        self._float = fresh
        self._removed = np.zeros(0, np.int64)
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the label -> row lookup and the search-time filter of removed labels."""
        faiss = _faiss()
        labels = self._meta["faiss_id"].to_numpy().astype(np.int64)
        self._row_of_label = np.full(self._next_label, -1, np.int64)
        self._row_of_label[labels] = np.arange(len(labels))
        self._id_array = self._meta.index.to_numpy(dtype=object)
        if len(self._removed):
            batch = faiss.IDSelectorBatch(self._removed)
            self._selector = (faiss.IDSelectorNot(batch), batch)  # keep the inner one alive
        else:
            self._selector = None

    # --- reading it -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._meta)

    def __repr__(self) -> str:
        return (f"FeatureIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, "
                f"code_bits={self.code_bytes * 8}, embedder={self.models.get('embedder')!r})")

    def contains(self, item_id: str) -> bool:
        """Whether `item_id` is in the index."""
        return item_id in self._meta.index

    def ids(self) -> list[str]:
        """Every id in the index, in the order they were added."""
        return self._meta.index.tolist()

    def labels_of(self, ids: Iterable[str] | str) -> np.ndarray:
        """The int64 FAISS labels of ids.

        Raises:
            UnknownId: an id is not in the index.
        """
        ids = _as_id_list(ids)
        positions = self._meta.index.get_indexer(ids)
        if (positions < 0).any():
            raise _unknown([i for i, p in zip(ids, positions) if p < 0])
        return self._meta["faiss_id"].to_numpy()[positions].astype(np.int64)

    def ids_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """String ids (object array, None where a label is -1 or not live) of FAISS labels."""
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.full(labels.shape, -1, np.int64)
        valid = (labels >= 0) & (labels < self._next_label)
        rows[valid] = self._row_of_label[labels[valid]]
        out = np.full(labels.shape, None, dtype=object)
        out[rows >= 0] = self._id_array[rows[rows >= 0]]
        return out

    def vectors(self, ids: Iterable[str] | str) -> np.ndarray:
        """The stored float vectors of ids (approximate for ivfpq), float32 (n, dim).

        Raises:
            UnknownId: an id is not in the index.
        """
        labels = self.labels_of(ids)
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        return self._float.reconstruct_batch(np.ascontiguousarray(labels))

    def codes(self, ids: Iterable[str] | str) -> np.ndarray:
        """The stored binary codes of ids, uint8 (n, code_bytes).

        Raises:
            UnknownId: an id is not in the index. ConfigError: the index holds no codes.
        """
        if self._binary is None:
            raise ConfigError("this index holds no binary codes (built with codes=False)")
        labels = self.labels_of(ids)
        return np.stack([self._binary.reconstruct(int(label)) for label in labels]) if len(labels) \
            else np.zeros((0, self.code_bytes), np.uint8)

    def metadata(self, ids: Iterable[str] | str) -> list[dict[str, Any] | None]:
        """Metadata of ids: id, path, box [x1, y1, x2, y2], label, score, width, height, crop.

        Returns:
            One dict per id, None for ids not in the index.
        """
        ids = _as_id_list(ids)
        positions = self._meta.index.get_indexer(ids)
        rows = self._meta.iloc[positions[positions >= 0]]
        records = iter(rows.to_dict("records"))
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

    def iter_vectors(self, chunk_rows: int = READ_BATCH_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, float32 vectors) of every live row, in chunks (vectors approximate for ivfpq)."""
        labels = self._meta["faiss_id"].to_numpy().astype(np.int64)
        for start in range(0, len(labels), chunk_rows):
            chunk = np.ascontiguousarray(labels[start:start + chunk_rows])
            yield chunk, self._float.reconstruct_batch(chunk)

    def vectors_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Stored float vectors of FAISS labels (which must be live)."""
        return self._float.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))

    def metadata_frame(self) -> Any:
        """The id table as a DataFrame (index id; faiss_id and metadata columns)."""
        return self._meta.copy()

    # --- searching ------------------------------------------------------------------------

    def _float_params(self, k: int) -> Any:
        faiss = _faiss()
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(self.params.get("ef_search", 128)), k)
            if self._selector is not None:
                params.sel = self._selector[0]
            return params
        if self.kind in ("ivf", "ivfpq"):
            params = faiss.SearchParametersIVF()
            params.nprobe = int(self.params.get("nprobe", 16))
            return params
        return None

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"query vectors have shape {vectors.shape} but this index holds {self.dim}-d "
                              f"vectors (embedder {self.models.get('embedder')!r}): embed the queries "
                              "with the same model")
        vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
        _faiss().normalize_L2(vectors)
        return vectors

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str | None]]]:
        """Nearest neighbours by cosine similarity.

        Args:
            vectors: (n, dim) or (dim,) queries; they are L2-normalised here.
            k: neighbours per query (capped at the number of indexed vectors).

        Returns:
            scores: float32 (n, k') cosine similarities, best first (NaN where nothing was found).
            ids: n lists of k' ids (None where nothing was found; approximate kinds may find fewer).

        Raises:
            ConfigError: the vectors do not have the index's dimension, or k < 1.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        vectors = self._check_vectors(vectors)
        k = min(k, len(self))
        if k == 0 or not len(vectors):
            return np.zeros((len(vectors), 0), np.float32), [[] for _ in range(len(vectors))]
        scores, labels = self._float.search(vectors, k, params=self._float_params(k))
        return self._results(scores.astype(np.float32), labels)

    def search_codes(self, codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str | None]]]:
        """Nearest neighbours by Hamming distance between packed binary codes (exact).

        Args:
            codes: uint8 (n, code_bytes) or (code_bytes,) packed codes.
            k: neighbours per query.

        Returns:
            distances: int32 (n, k') Hamming distances, nearest first (-1 where nothing was found).
            ids: n lists of k' ids.

        Raises:
            ConfigError: the codes do not have the index's length, k < 1, or no codes indexed.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if self._binary is None:
            raise ConfigError("this index holds no binary codes (built with codes=False)")
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[None, :]
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.code_bytes:
            raise ConfigError(f"query codes have shape {codes.shape} and dtype {codes.dtype} but this index "
                              f"holds uint8 codes of {self.code_bytes} bytes ({self.code_bytes * 8} bits)")
        k = min(k, len(self))
        if k == 0 or not len(codes):
            return np.zeros((len(codes), 0), np.int32), [[] for _ in range(len(codes))]
        distances, labels = self._binary.search(np.ascontiguousarray(codes), k)
        distances = distances.astype(np.int32)
        distances[labels < 0] = -1
        ids = self.ids_of_labels(labels)
        return distances, [list(row) for row in ids]

    def _results(self, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[list[str | None]]]:
        ids = self.ids_of_labels(labels)
        scores[ids == None] = np.nan  # noqa: E711 - elementwise on an object array
        return scores, [list(row) for row in ids]

    def range_pairs(self, vectors: np.ndarray, labels: np.ndarray, threshold: float,
                    max_neighbors: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (query label, neighbour label, score) with cosine >= threshold.

        Uses FAISS range search (flat, ivf, ivfpq, hnsw); each query keeps at most
        `max_neighbors` neighbours (its best), which is enough to connect groups. Self
        pairs and removed labels are dropped; each pair appears once per direction found.

        Returns:
            three aligned arrays: query labels, neighbour labels (int64), scores (float32).
        """
        vectors = self._check_vectors(vectors)
        params = self._float_params(max_neighbors)
        # faiss keeps scores > radius; nextafter makes the threshold inclusive
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        lims, scores, found = self._float.range_search(vectors, radius, params=params)
        counts = np.diff(lims.astype(np.int64))
        query_rows = np.repeat(np.arange(len(counts)), counts)
        query_labels = np.asarray(labels, np.int64)[query_rows]
        keep = found != query_labels
        if len(self._removed):
            keep &= ~np.isin(found, self._removed)
        query_rows, query_labels, found, scores = query_rows[keep], query_labels[keep], found[keep], scores[keep]
        if max_neighbors and len(query_rows):
            keep = _best_per_query(query_rows, scores, max_neighbors)
            query_labels, found, scores = query_labels[keep], found[keep], scores[keep]
        return query_labels, found.astype(np.int64), scores.astype(np.float32)


def _best_per_query(query_rows: np.ndarray, scores: np.ndarray, cap: int) -> np.ndarray:
    """Indices of the results that are among their query's `cap` highest scores."""
    order = np.lexsort((-scores, query_rows))  # by query, then by score descending
    sorted_rows = query_rows[order]
    starts = np.searchsorted(sorted_rows, sorted_rows, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < cap])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _training_sample(files: Sequence[str], dim: int, count: int, size: int, seed: int) -> np.ndarray:
    """A uniform random sample of `size` status-ok vectors, read in one streaming pass."""
    faiss = _faiss()
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
    sample = np.empty((size, dim), np.float32)
    seen = filled = 0
    for batch in iter_feature_batches(files, dim, 0, with_meta=False, with_codes=False):
        n = len(batch.ids)
        lo, hi = np.searchsorted(chosen, [seen, seen + n])
        if hi > lo:
            sample[filled:filled + hi - lo] = batch.vectors[chosen[lo:hi] - seen]
            filled += hi - lo
        seen += n
    sample = sample[:filled]
    faiss.normalize_L2(sample)
    return sample
