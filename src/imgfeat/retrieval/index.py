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

The kinds of float index (flat, hnsw, ivf, ivfpq) are in faiss_kinds.py; the features are read
with `dataset.open_features`, so any imgfeat output (local or fsspec URL, with or without a
manifest) can be indexed.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..dataset import READ_BATCH_ROWS, FeatureDataset, code_matrix, crop_kind, embedding_matrix, open_features
from ..errors import ConfigError, SourceError
from .entries import check_holds, count_entries, index_crop, iter_entries, row_id, sample_entries
from .id_table import IdTable, as_id_list, meta_columns
from .faiss_kinds import MIN_TRAIN_VECTORS, choose_kind, faiss_module, get_kind, new_binary_index
from .index_files import FORMAT_VERSION, IndexParts, read_index_folder, write_index_folder

HNSW_REBUILD_RATIO = 0.3  # rebuild an HNSW graph once this share of its vectors is removed


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
                 sources: list[str] | None = None, created: str | None = None, crop: str = "object"):
        self.kind = kind
        self._kind = get_kind(kind)
        # "object" (main-object vectors), "whole-image" (the whole image's) or "objects" (every
        # stored object, ids "<row id>#<j>": entries.py)
        self.crop = crop
        self.dim = dim
        self.code_bytes = code_bytes
        self.models = dict(models)
        self.config = dict(config)
        self.params = dict(params)
        self.sources = list(sources or [])
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._float = float_index
        self._binary = binary_index
        self._ids = IdTable(meta, next_label)
        self._removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, np.int64)
        self._selector: Any = None
        self._rows: dict[str, list[str]] | None = None  # objects index: row id -> its entries
        self._reindex()

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, features: str | os.PathLike | Sequence[str | os.PathLike], kind: str = "auto", *,
              codes: bool = True, params: dict[str, Any] | None = None,
              batch_rows: int = READ_BATCH_ROWS, seed: int = 0, vector: str = "auto") -> "FeatureIndex":
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
            vector: "object" (the main object's vector: the same product in other photos),
                "image" (the whole image's: near-duplicate copies), "objects" (every object of
                features extracted with --objects K: a search matches any of them), or "auto"
                (default): the object's, or the image's for features extracted with --no-detect.

        Returns:
            FeatureIndex

        Raises:
            SourceError: not a feature dataset. ConfigError: unknown kind, or too few vectors
            to train an ivf/ivfpq index.
        """
        if kind != "auto":
            get_kind(kind)
        dataset = open_features(features)
        crop = index_crop(dataset, vector)
        count = count_entries(dataset, crop)
        if not count:
            raise SourceError(f"{dataset.location} has no rows with status ok to index")
        dim = dataset.dim
        code_bytes = dataset.code_bytes if codes else 0
        kind = choose_kind(count, dim) if kind == "auto" else kind
        chosen = {**get_kind(kind).default_params(count, dim), **(params or {})}
        float_index = get_kind(kind).new(dim, chosen)
        if get_kind(kind).trained:
            if count < MIN_TRAIN_VECTORS:
                raise ConfigError(f"a {kind} index needs at least {MIN_TRAIN_VECTORS} vectors to train, "
                                  f"these features have {count}: use --kind flat")
            float_index.train(sample_entries(dataset, crop, dim, count, min(count, chosen["nlist"] * 64), seed))
        index = cls(kind, dim, code_bytes, dataset.models, dataset.config, chosen, float_index,
                    new_binary_index(code_bytes) if code_bytes else None, None, 0, crop=crop)
        index._add_dataset(dataset, batch_rows)
        return index

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureIndex":
        """Open an index folder written by `save`.

        Raises:
            SourceError: the folder is not an imgfeat index.
        """
        parts = read_index_folder(path)
        info = parts.info
        return cls(info["kind"], info["dim"], info.get("code_bytes", 0), info.get("models") or {},
                   info.get("config") or {}, info.get("params") or {}, parts.float_index, parts.binary_index,
                   parts.meta, info["next_label"], parts.removed, info.get("sources"), info.get("created"),
                   info.get("crop", "object"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index folder; an existing index there is replaced atomically.

        Raises:
            OutputError: `path` exists and is not an index folder (nothing is deleted).
        """
        write_index_folder(path, IndexParts(self.describe(), self._float, self._binary, self._ids.frame,
                                            self._removed))

    def describe(self) -> dict[str, Any]:
        """What index.json holds: kind, sizes, models, config, parameters."""
        return {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
            "code_bytes": self.code_bytes, "metric": "inner_product (cosine on L2-normalised vectors)",
            "count": len(self), "next_label": self._ids.next_label, "models": self.models, "crop": self.crop,
            "config": self.config, "params": self.params, "sources": self.sources,
            "created": self.created, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    # --- changing it ----------------------------------------------------------------------

    def add(self, features: str | os.PathLike | Sequence[str | os.PathLike],
            batch_rows: int = READ_BATCH_ROWS) -> tuple[int, int]:
        """Add the status-ok rows of more feature shards, without rebuilding.

        Ids already in the index are skipped (so adding the same folder twice is harmless).
        An ivf/ivfpq index keeps the quantiser it was trained with.

        Args:
            features: a feature folder, or shard files (the manifest is read beside them).

        Returns:
            (rows added, ok rows skipped because their id was already indexed).

        Raises:
            ConfigError: the features were made with another embedder or hasher, their
                vectors/codes have another size, or they are whole-image vectors for an index of
                object vectors (or the other way round).
        """
        dataset = open_features(features)
        if self.crop == "object" and crop_kind(dataset) != "object":
            raise ConfigError(f"{dataset.location} holds whole-image vectors (extracted with --no-detect) but "
                              "this index holds main-object vectors: they answer different questions; build a "
                              "separate index")
        check_holds(dataset, self.crop)
        for role in ("embedder", "hasher"):
            mine, theirs = self.models.get(role), dataset.models.get(role)
            if role == "hasher" and not self.code_bytes:
                continue
            if mine and theirs and mine != theirs:
                raise ConfigError(f"{dataset.root} was made with {role} {theirs!r} but this index holds "
                                  f"{role} {mine!r} features: extract with the same model or build another index")
        if dataset.dim != self.dim:
            raise ConfigError(f"{dataset.location} holds {dataset.dim}-d embeddings but this index holds "
                              f"{self.dim}-d ones: the features were made with another embedder; build a "
                              "separate index")
        if self.code_bytes and dataset.code_bytes != self.code_bytes:
            raise ConfigError(f"{dataset.location} holds {dataset.code_bytes * 8}-bit codes but this index "
                              f"holds {self.code_bytes * 8}-bit ones: extract with the same --code-bits/--hash")
        return self._add_dataset(dataset, batch_rows)

    def _add_dataset(self, dataset: FeatureDataset, batch_rows: int) -> tuple[int, int]:
        added = skipped = 0
        for batch in iter_entries(dataset, self.crop, codes=bool(self.code_bytes), batch_rows=batch_rows):
            batch_ids = batch.column("id").to_pylist()
            rows, duplicates = self._ids.new_rows(batch_ids)
            skipped += duplicates
            if not len(rows):
                continue
            labels = self._ids.append(batch_ids, meta_columns(batch), rows)
            vectors = embedding_matrix(batch.column("embedding"), self.dim)[rows]
            faiss_module().normalize_L2(vectors)  # float16 storage and rounding leave norms slightly off 1
            self._float.add_with_ids(vectors, labels)
            if self._binary is not None:
                codes = code_matrix(batch.column("code"), self.code_bytes)
                self._binary.add_with_ids(np.ascontiguousarray(codes[rows]), labels)
            added += len(rows)
        self._rows = None
        if dataset.location not in self.sources:
            self.sources.append(dataset.location)
        return added, skipped

    def remove(self, ids: Iterable[str] | str, missing_ok: bool = False) -> int:
        """Delete ids from the index.

        Args:
            ids: the ids to delete (of an objects index: row ids, each deleting all its objects,
                or single "<row id>#<j>" entries).
            missing_ok: ignore ids that are not there instead of raising.

        Returns:
            The number of entries removed.

        Raises:
            UnknownId: an id is not in the index (unless `missing_ok`).
        """
        labels = self._ids.drop(self.expand_ids(ids), missing_ok)
        self._rows = None
        if not len(labels):
            return 0
        if self._kind.filters_removed:
            self._removed = np.union1d(self._removed, labels)  # e.g. HNSW cannot delete: filter at search
        else:
            self._kind.remove(self._float, labels)
        if self._binary is not None:
            self._binary.remove_ids(faiss_module().IDSelectorBatch(labels))
        self._reindex()
        if self._kind.filters_removed and len(self._removed) > HNSW_REBUILD_RATIO * max(1, self._float.ntotal):
            self._rebuild()
        return len(labels)

    def _rebuild(self) -> None:
        """A fresh index of the live vectors (drops the filtered-out removed ones for good)."""
        labels = self._ids.labels()
        fresh = self._kind.new(self.dim, self.params)
        for start in range(0, len(labels), READ_BATCH_ROWS):
            chunk = np.ascontiguousarray(labels[start:start + READ_BATCH_ROWS])
            fresh.add_with_ids(self._float.reconstruct_batch(chunk), chunk)
        self._float = fresh
        self._removed = np.zeros(0, np.int64)
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the search-time filter of removed labels."""
        faiss = faiss_module()
        if len(self._removed):
            batch = faiss.IDSelectorBatch(self._removed)
            self._selector = (faiss.IDSelectorNot(batch), batch)  # keep the inner one alive
        else:
            self._selector = None

    # --- reading it -----------------------------------------------------------------------

    @property
    def next_label(self) -> int:
        """One more than the largest FAISS label ever given (labels are never reused)."""
        return self._ids.next_label

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"FeatureIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, "
                f"code_bits={self.code_bytes * 8}, embedder={self.models.get('embedder')!r})")

    def contains(self, item_id: str) -> bool:
        """Whether `item_id` is in the index (of an objects index: an entry, or a row with entries)."""
        return item_id in self._ids or (self.crop == "objects" and item_id in self._object_rows())

    def _object_rows(self) -> dict[str, list[str]]:
        if self._rows is None:
            rows: dict[str, list[str]] = {}
            for entry in self.ids():
                rows.setdefault(row_id(entry), []).append(entry)
            self._rows = rows
        return self._rows

    def expand_ids(self, ids: Iterable[str] | str) -> list[str]:
        """The entries of ids: themselves, except that an objects index turns a row id into the
        ids of its objects ("<row id>#0", ...). Unknown ids pass through unchanged."""
        ids = as_id_list(ids)
        if self.crop != "objects":
            return ids
        rows = self._object_rows()
        return [entry for item_id in ids for entry in rows.get(item_id, [item_id])]

    def ids(self) -> list[str]:
        """Every id in the index, in the order they were added."""
        return self._ids.frame.index.tolist()

    def labels_of(self, ids: Iterable[str] | str) -> np.ndarray:
        """The int64 FAISS labels of ids. Raises UnknownId for an id not in the index."""
        return self._ids.labels_of(ids)

    def ids_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """String ids (object array, None where a label is -1 or not live) of FAISS labels."""
        return self._ids.ids_of_labels(labels)

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
        """Metadata of ids (id, path, box, label, score, width, height, crop); None if not there.
        Of an objects index, a row id gives its main object's."""
        ids = as_id_list(ids)
        if self.crop == "objects":
            rows = self._object_rows()
            ids = [rows.get(item_id, [item_id])[0] for item_id in ids]
        return self._ids.metadata(ids)

    def iter_vectors(self, chunk_rows: int = READ_BATCH_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, float32 vectors) of every live row, in chunks (vectors approximate for ivfpq)."""
        labels = self._ids.labels()
        for start in range(0, len(labels), chunk_rows):
            chunk = np.ascontiguousarray(labels[start:start + chunk_rows])
            yield chunk, self._float.reconstruct_batch(chunk)

    def vectors_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Stored float vectors of FAISS labels (which must be live)."""
        return self._float.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))

    def metadata_frame(self) -> Any:
        """The id table as a DataFrame (index id; faiss_id and metadata columns)."""
        return self._ids.frame.copy()

    # --- searching ------------------------------------------------------------------------

    def _float_params(self, k: int) -> Any:
        return self._kind.search_params(self.params, k, self._selector[0] if self._selector else None)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"query vectors have shape {vectors.shape} but this index holds {self.dim}-d "
                              f"vectors (embedder {self.models.get('embedder')!r}): embed the queries "
                              "with the same model")
        vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
        faiss_module().normalize_L2(vectors)
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

    def range_search(self, vectors: np.ndarray, threshold: float,
                     k: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every indexed vector with cosine >= `threshold` to each query (removed ones left out).

        Returns:
            three aligned arrays: query row, neighbour label (int64), score (float32).
        """
        vectors = self._check_vectors(vectors)
        # faiss keeps scores > radius; nextafter makes the threshold inclusive
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        lims, scores, found = self._float.range_search(vectors, radius, params=self._float_params(k))
        rows = np.repeat(np.arange(len(vectors)), np.diff(lims.astype(np.int64)))
        if len(self._removed):
            keep = ~np.isin(found, self._removed)
            rows, found, scores = rows[keep], found[keep], scores[keep]
        return rows, found.astype(np.int64), scores.astype(np.float32)
