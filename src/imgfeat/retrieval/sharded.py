"""An index in parts: built one part at a time (bounded memory), searched together.

    index = build_sharded("features/", "index/", shards=4)   # writes index/shard-00000/ ...
    index = open_index("index/")                              # a ShardedIndex or a FeatureIndex
    scores, ids = index.search(vectors, k=10)                 # the top k over every part

When one index does not fit a machine's memory (at 100M rows the id table alone is ~50
GiB, docs/scale.md), `build_sharded` splits the feature files into `shards` contiguous groups of about equal
row counts and builds each group as an ordinary `FeatureIndex` folder, saving and dropping it
before the next: peak memory is about one part. The float index of a trained kind (ivf, ivfpq)
is trained once, on a sample of every part, and each part starts from a copy of it, so the parts
share their coarse cells and a sharded ivf search visits the same cells a single ivf index would.

    INDEX/index.json         "sharded": true, kind, dim, code_bytes, models, crop, config,
                             params, count, parts: [{name, count, files}]
    INDEX/shard-00000/ ...   each a FeatureIndex folder (index_files.py), its own id table
    INDEX/trained.faiss      ivf/ivfpq: the trained empty index every part (and a later one) copies

A search asks every part for its top k and merges them: scores descending (cosine), Hamming
distances ascending. Lookups by id (vectors, codes, metadata, contains) ask each part's own id
table; no table of every id is ever built. Remove routes ids to the parts that hold them and
rewrites only those. Add builds the new features into one more part (ids any part holds are
skipped; the existing parts are not loaded, only their id columns read), e.g. after an
incremental extract.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Iterable, Sequence

import numpy as np

from ..dataset import READ_BATCH_ROWS, FeatureDataset, open_features
from ..errors import ConfigError, ImgfeatError, SourceError
from .entries import count_entries, index_crop, sample_entries
from .faiss_kinds import MIN_TRAIN_VECTORS, choose_kind, faiss_module, get_kind, new_binary_index
from .id_table import as_id_list, unknown_ids
from .index import FeatureIndex
from .index_files import FORMAT_VERSION, IDS_FILE, PART_PREFIX, TRAINED_FILE, check_index_target, \
    read_float_index, read_index_folder, read_index_json, swap_in, temporary_folder, write_float_index, \
    write_index_json

SPLIT = "files"  # how rows are split into parts: contiguous groups of feature files


def part_name(number: int) -> str:
    return f"{PART_PREFIX}{number:05d}"


def split_files(dataset: FeatureDataset, shards: int) -> list[list[str]]:
    """Contiguous groups of `dataset.files` with about equal row counts (from the Parquet footers).

    Raises:
        ConfigError: fewer files than shards (a file is the unit of splitting).
    """
    import pyarrow.parquet as pq

    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    if len(dataset.files) < shards:
        raise ConfigError(f"{dataset.location} has {len(dataset.files)} feature files but {shards} shards were "
                          f"asked for: a part is a group of whole files; use --shards {len(dataset.files)} or "
                          "fewer (or extract with a smaller --shard-size)")
    rows = []
    for path in dataset.files:
        with dataset.fs.open(path, "rb") as fh:
            rows.append(pq.ParquetFile(fh).metadata.num_rows)
    ends = np.cumsum(rows)
    groups: list[list[str]] = []
    start = 0
    for part in range(shards):
        # the first file whose running total reaches this part's share, leaving a file per later part
        target = ends[-1] * (part + 1) / shards
        stop = int(np.searchsorted(ends, target, side="left")) + 1
        stop = max(stop, start + 1)
        stop = min(stop, len(dataset.files) - (shards - part - 1))
        groups.append(dataset.files[start:stop])
        start = stop
    return groups


def build_sharded(features: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike,
                  shards: int, kind: str = "auto", *, codes: bool = True, params: dict[str, Any] | None = None,
                  batch_rows: int = READ_BATCH_ROWS, seed: int = 0, vector: str = "auto") -> "ShardedIndex":
    """Build a sharded index folder part by part; only one part is in memory at a time.

    Args:
        features: the folder written by `imgfeat extract` (local or fsspec URL), or shard files.
        output: the index folder to write (replaced atomically when it holds an index).
        shards: number of parts (at most the number of feature files).
        kind: "auto" (chosen for the largest part: each part has to fit a machine), "flat",
            "hnsw", "ivf" or "ivfpq".
        codes, params, batch_rows, seed, vector: as `FeatureIndex.build`; ivf/ivfpq parameters
            (nlist) are chosen for the whole collection, as the quantiser is shared.

    Returns:
        The ShardedIndex at `output`, its parts not yet loaded.

    Raises:
        SourceError: not a feature dataset, or no ok rows. ConfigError: fewer files than
        shards, an unknown kind, too few vectors to train. OutputError: `output` holds
        something else than an index.
    """
    faiss = faiss_module()
    if kind != "auto":
        get_kind(kind)
    dataset = open_features(features)
    groups = split_files(dataset, shards)
    crop = index_crop(dataset, vector)
    counts = [count_entries(dataclasses.replace(dataset, files=group), crop) for group in groups]
    count = sum(counts)
    if not count:
        raise SourceError(f"{dataset.location} has no rows with status ok to index")
    dim, code_bytes = dataset.dim, dataset.code_bytes if codes else 0
    kind = choose_kind(max(counts), dim) if kind == "auto" else kind
    index_kind = get_kind(kind)
    chosen = {**index_kind.default_params(count, dim), **(params or {})}
    trained = index_kind.new(dim, chosen)
    if index_kind.trained:
        if count < MIN_TRAIN_VECTORS:
            raise ConfigError(f"a {kind} index needs at least {MIN_TRAIN_VECTORS} vectors to train, "
                              f"these features have {count}: use --kind flat")
        # one quantiser for every part, trained on a sample of all of them
        trained.train(sample_entries(dataset, crop, dim, count, min(count, chosen["nlist"] * 64), seed))
    path = check_index_target(output)
    tmp = temporary_folder(path)
    parts = []
    try:
        if index_kind.trained:  # kept for parts added later (`ShardedIndex.add`)
            write_float_index(trained, os.path.join(tmp, TRAINED_FILE))
        for number, group in enumerate(groups):
            part = FeatureIndex(kind, dim, code_bytes, dataset.models, dataset.config, chosen,
                                faiss.clone_index(trained), new_binary_index(code_bytes) if code_bytes else None,
                                None, 0, crop=crop)
            part._add_dataset(dataclasses.replace(dataset, files=group), batch_rows)
            part.save(os.path.join(tmp, part_name(number)))
            parts.append({"name": part_name(number), "count": len(part), "files": list(group)})
            del part  # the next part starts from nothing: peak memory is one part
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = {
            "format_version": FORMAT_VERSION, "sharded": True, "split": SPLIT, "kind": kind, "dim": dim,
            "code_bytes": code_bytes, "metric": "inner_product (cosine on L2-normalised vectors)",
            "count": sum(p["count"] for p in parts), "models": dataset.models, "crop": crop,
            "config": dataset.config, "params": chosen, "sources": [dataset.location], "parts": parts,
            "created": created, "updated": created,
        }
        write_index_json(tmp, info)
        swap_in(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return ShardedIndex.load(path, lazy=True)


def open_index(path: str | os.PathLike, mmap: bool = False,
               lazy: bool = False) -> "FeatureIndex | ShardedIndex":
    """Load an index folder, single or sharded (what `imgfeat.load_index` does).

    Args:
        path: the folder.
        mmap: map a sharded index's vectors from its files (read-only; see `ShardedIndex.load`).
        lazy: read a sharded index's parts when first needed (e.g. not at all for `add`).

    Raises:
        SourceError: not an index folder, or a part missing or unreadable.
        ConfigError: mmap for a single index (it can be changed in place, which a mapped
            FAISS index does not survive).
    """
    if read_index_json(path).get("sharded"):
        return ShardedIndex.load(path, lazy=lazy, mmap=mmap)
    if mmap:
        raise ConfigError(f"{os.fspath(path)} is a single index; memory-mapped loading is for sharded indexes "
                          "(build with --shards N)")
    return FeatureIndex.load(path)


def _load_part(folder: str) -> FeatureIndex:
    """A part read with its float index memory-mapped (as `FeatureIndex.load`, read-only)."""
    parts = read_index_folder(folder, mmap=True)
    info = parts.info
    return FeatureIndex(info["kind"], info["dim"], info.get("code_bytes", 0), info.get("models") or {},
                        info.get("config") or {}, info.get("params") or {}, parts.float_index, parts.binary_index,
                        parts.meta, info["next_label"], parts.removed, info.get("sources"), info.get("created"),
                        info.get("crop", "object"))


def _merge(results: list[tuple[np.ndarray, list[list[str | None]]]], k: int, descending: bool,
           missing: float) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each row across parts' (values, ids); missing values sort last."""
    rows = len(results[0][1])
    if not rows:
        return np.zeros((0, 0), results[0][0].dtype), np.zeros((0, 0), object)
    values = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([np.array(r[1], dtype=object).reshape(rows, -1) for r in results], axis=1)
    absent = np.equal(ids, None)
    key = (-values if descending else values).astype(np.float64)
    key[absent] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]  # stable: ties keep part order
    merged_values = np.take_along_axis(values, order, axis=1)
    merged_ids = np.take_along_axis(ids, order, axis=1)
    merged_values[np.equal(merged_ids, None)] = missing
    return merged_values, merged_ids


class ShardedIndex:
    """Parts of one index (each a FeatureIndex) searched together; open with `ShardedIndex.load`.

    It answers what search.py, serve and the API ask of an index (search, search_codes,
    vectors, codes, metadata, contains, len, describe, kind/dim/code_bytes/models/config/
    crop/params). FAISS labels are per part, so the label-level methods dedup uses
    (labels_of, range_search, iter_vectors) are not offered.

    Attributes:
        path: the folder. parts: the part folder names. params: search parameters pushed to
            every part at each search (change `nprobe` / `ef_search` here).
    """

    def __init__(self, path: str, info: dict[str, Any], mmap: bool = False):
        self.path = path
        self.mmap = mmap
        self.info = info
        self.kind = info["kind"]
        self.dim = int(info["dim"])
        self.code_bytes = int(info.get("code_bytes", 0))
        self.models = dict(info.get("models") or {})
        self.config = dict(info.get("config") or {})
        self.params = dict(info.get("params") or {})
        self.crop = info.get("crop", "object")
        self.sources = list(info.get("sources") or [])
        self.created = info.get("created")
        self.parts = [str(p["name"]) for p in info["parts"]]
        self._counts = [int(p["count"]) for p in info["parts"]]
        self._loaded: dict[int, FeatureIndex] = {}
        self._changed: set[int] = set()

    @classmethod
    def load(cls, path: str | os.PathLike, lazy: bool = False, mmap: bool = False) -> "ShardedIndex":
        """Open a sharded index folder.

        Args:
            path: the folder `build_sharded` wrote.
            lazy: read each part when it is first needed instead of now (a bad part then
                fails the first search rather than the load).
            mmap: map the parts' float vectors from their files instead of reading them
                (read-only: `remove` is refused). An ivf part's search then pages in only the
                lists it visits; a flat part's touches every vector.

        Raises:
            SourceError: not a sharded index folder, or (unless lazy) a part missing or unreadable.
        """
        path = os.path.abspath(os.fspath(path))
        info = read_index_json(path)
        if not info.get("sharded"):
            raise SourceError(f"{path} is a single index, not a sharded one: open it with FeatureIndex.load "
                              "(or imgfeat.load_index, which opens either)")
        if info.get("format_version") != FORMAT_VERSION or not isinstance(info.get("parts"), list) \
                or not info["parts"] or any(not isinstance(p, dict) or "name" not in p for p in info["parts"]):
            raise SourceError(f"{path}/index.json does not describe a sharded index of this version of imgfeat: "
                              "rebuild it with `imgfeat index FEATURES -o INDEX --shards N`")
        index = cls(path, info, mmap)
        if not lazy:
            for number in range(len(index.parts)):
                index._part(number)
        return index

    def _part(self, number: int) -> FeatureIndex:
        """Part `number`, read on first use and kept; checked against the top-level description."""
        part = self._loaded.get(number)
        if part is not None:
            return part
        import pyarrow as pa

        folder = os.path.join(self.path, self.parts[number])
        rebuild = "rebuild it with `imgfeat index FEATURES -o INDEX --shards N`"
        if not os.path.isdir(folder):
            raise SourceError(f"{self.path}: part {self.parts[number]} is missing; the index is incomplete: {rebuild}")
        try:
            part = _load_part(folder) if self.mmap else FeatureIndex.load(folder)
        except (ImgfeatError, RuntimeError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
            # faiss raises RuntimeError on a truncated file, pyarrow ArrowInvalid on a bad table
            raise SourceError(f"{self.path}: part {self.parts[number]} cannot be read ({exc}): {rebuild}") from exc
        if (part.dim, part.code_bytes, part.kind) != (self.dim, self.code_bytes, self.kind) or \
                part.models.get("embedder") != self.models.get("embedder"):
            raise SourceError(f"{self.path}: part {self.parts[number]} holds {part!r}, which does not match the "
                              f"index ({self.kind}, {self.dim}-d, {self.code_bytes * 8}-bit codes, embedder "
                              f"{self.models.get('embedder')!r}): {rebuild}")
        self._loaded[number] = part
        return part

    def _each(self) -> Iterable[FeatureIndex]:
        for number in range(len(self.parts)):
            yield self._part(number)

    # --- describing it ----------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(self._loaded[i]) if i in self._loaded else count for i, count in enumerate(self._counts))

    def __repr__(self) -> str:
        return (f"ShardedIndex(kind={self.kind!r}, parts={len(self.parts)}, count={len(self)}, dim={self.dim}, "
                f"code_bits={self.code_bytes * 8}, embedder={self.models.get('embedder')!r})")

    def describe(self) -> dict[str, Any]:
        """What index.json holds, with the parts' current counts."""
        parts = [{**p, "count": len(self._loaded[i]) if i in self._loaded else p["count"]}
                 for i, p in enumerate(self.info["parts"])]
        return {**self.info, "params": self.params, "parts": parts, "count": sum(p["count"] for p in parts)}

    # --- lookups by id: each part's own table -----------------------------------------------

    def contains(self, item_id: str) -> bool:
        """Whether `item_id` is in any part."""
        return any(part.contains(item_id) for part in self._each())

    def expand_ids(self, ids: Iterable[str] | str) -> list[str]:
        """The entries of ids (see `FeatureIndex.expand_ids`; a row's objects are all in one part)."""
        ids = as_id_list(ids)
        if self.crop != "objects":
            return ids
        holders = self._holders(ids)
        out: list[str] = []
        for item_id, number in zip(ids, holders.tolist()):
            out.extend(self._part(number).expand_ids([item_id]) if number >= 0 else [item_id])
        return out

    def ids(self) -> list[str]:
        """Every id, part by part (builds the whole list: large for a large index)."""
        return [item_id for part in self._each() for item_id in part.ids()]

    def _holders(self, ids: list[str]) -> np.ndarray:
        """The part number holding each id (-1: none)."""
        holders = np.full(len(ids), -1, np.int64)
        for number, part in enumerate(self._each()):
            for row in np.flatnonzero(holders < 0):
                if part.contains(ids[row]):
                    holders[row] = number
        return holders

    def _gather(self, ids: Iterable[str] | str, width: int, dtype: Any, read: str) -> np.ndarray:
        ids = as_id_list(ids)
        holders = self._holders(ids)
        if (holders < 0).any():
            raise unknown_ids([i for i, h in zip(ids, holders) if h < 0])
        out = np.zeros((len(ids), width), dtype)
        for number in np.unique(holders):
            rows = np.flatnonzero(holders == number)
            out[rows] = getattr(self._part(int(number)), read)([ids[r] for r in rows])
        return out

    def vectors(self, ids: Iterable[str] | str) -> np.ndarray:
        """The stored float vectors of ids (approximate for ivfpq), float32 (n, dim).

        Raises:
            UnknownId: an id is in no part.
        """
        return self._gather(ids, self.dim, np.float32, "vectors")

    def codes(self, ids: Iterable[str] | str) -> np.ndarray:
        """The stored binary codes of ids, uint8 (n, code_bytes).

        Raises:
            UnknownId: an id is in no part. ConfigError: the index holds no codes.
        """
        if not self.code_bytes:
            raise ConfigError("this index holds no binary codes (built with codes=False)")
        return self._gather(ids, self.code_bytes, np.uint8, "codes")

    def metadata(self, ids: Iterable[str] | str) -> list[dict[str, Any] | None]:
        """Metadata of ids (id, path, box, label, score, width, height, crop); None if in no part."""
        ids = as_id_list(ids)
        out: list[dict[str, Any] | None] = [None] * len(ids)
        for part in self._each():
            todo = [row for row, found in enumerate(out) if found is None]
            if not todo:
                break
            for row, meta in zip(todo, part.metadata([ids[r] for r in todo])):
                out[row] = meta
        return out

    # --- searching: every part's top k, merged ----------------------------------------------

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str | None]]]:
        """Nearest neighbours by cosine similarity over every part (see `FeatureIndex.search`).

        Returns:
            scores: float32 (n, k') best first (NaN where nothing was found); ids: n lists of k'.

        Raises:
            ConfigError: the vectors do not have the index's dimension, or k < 1.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        results = []
        for part in self._each():
            part.params.update(self.params)
            results.append(part.search(vectors, k))
        scores, ids = _merge(results, min(k, len(self)), descending=True, missing=np.nan)
        return scores.astype(np.float32), [list(row) for row in ids]

    def search_codes(self, codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str | None]]]:
        """Nearest neighbours by Hamming distance over every part (see `FeatureIndex.search_codes`).

        Returns:
            distances: int32 (n, k') nearest first (-1 where nothing was found); ids: n lists of k'.

        Raises:
            ConfigError: the codes do not have the index's length, k < 1, or no codes indexed.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not self.code_bytes:
            raise ConfigError("this index holds no binary codes (built with codes=False)")
        results = [part.search_codes(codes, k) for part in self._each()]
        distances, ids = _merge(results, min(k, len(self)), descending=False, missing=-1)
        return distances.astype(np.int32), [list(row) for row in ids]

    # --- changing it --------------------------------------------------------------------------

    def add(self, features: str | os.PathLike | Sequence[str | os.PathLike],
            batch_rows: int = READ_BATCH_ROWS) -> tuple[int, int]:
        """Add the status-ok rows of more feature shards as a new part, written at once.

        The existing parts are not read into memory or changed: only their id columns are
        read (one part at a time) to skip ids already indexed. An ivf/ivfpq index's new part
        starts from the quantiser trained at build time.

        Args:
            features: a feature folder, or shard files (e.g. the new shards of an incremental
                extract).

        Returns:
            (rows added, ok rows skipped because their id was already indexed).

        Raises:
            ConfigError: memory-mapped (read-only), or features that do not fit the index (see
                `FeatureIndex.add`). SourceError: the trained quantiser file is missing.
        """
        if self.mmap:
            raise ConfigError(f"{self.path} was opened memory-mapped, which is read-only: open it with "
                              "mmap=False to add to it")
        index_kind = get_kind(self.kind)
        float_index = read_float_index(os.path.join(self.path, TRAINED_FILE)) if index_kind.trained \
            else index_kind.new(self.dim, self.params)
        part = FeatureIndex(self.kind, self.dim, self.code_bytes, self.models, self.config, self.params, float_index,
                            new_binary_index(self.code_bytes) if self.code_bytes else None, None, 0, crop=self.crop)
        added, skipped = part.add(features, batch_rows)
        if added:
            held = self._already_held(part.ids())
            if held:  # indexed in another part: drop them from the new one
                part.remove(held)
                added, skipped = added - len(held), skipped + len(held)
        if not added:
            return 0, skipped
        number = len(self.parts)
        part.save(os.path.join(self.path, part_name(number)))
        self.parts.append(part_name(number))
        self._counts.append(len(part))
        self.info = {**self.info, "parts": [*self.info["parts"], {"name": part_name(number), "count": len(part),
                                                                   "sources": part.sources}],
                     "sources": list(dict.fromkeys([*self.sources, *part.sources]))}
        self.sources = self.info["sources"]
        self._loaded[number] = part
        self.save()  # index.json lists the new part (and parts changed by a remove are written first)
        return added, skipped

    def _already_held(self, ids: list[str]) -> list[str]:
        """Those of `ids` that an existing part holds, reading one part's id column at a time."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        candidates = pa.array(ids, pa.string())
        held = np.zeros(len(ids), bool)
        for number, name in enumerate(self.parts):
            if number in self._loaded:
                present = pa.array(self._loaded[number].ids(), pa.string())
            else:
                present = pq.read_table(os.path.join(self.path, name, IDS_FILE), columns=["id"]).column("id")
            held |= pc.is_in(candidates, value_set=present.cast(pa.string())).to_numpy(zero_copy_only=False)
        return [item_id for item_id, h in zip(ids, held) if h]

    def remove(self, ids: Iterable[str] | str, missing_ok: bool = False) -> int:
        """Delete ids from the parts that hold them (each part's kind decides how; see
        `FeatureIndex.remove`). Nothing is removed when an id is unknown and not `missing_ok`.

        Returns:
            The number of ids removed.

        Raises:
            UnknownId: an id is in no part (unless `missing_ok`).
        """
        if self.mmap:
            raise ConfigError(f"{self.path} was opened memory-mapped, which is read-only: open it with "
                              "mmap=False to remove ids")
        ids = list(dict.fromkeys(as_id_list(ids)))
        holders = self._holders(ids)
        if (holders < 0).any() and not missing_ok:
            raise unknown_ids([i for i, h in zip(ids, holders) if h < 0])
        removed = 0
        for number in np.unique(holders[holders >= 0]):
            removed += self._part(int(number)).remove([ids[r] for r in np.flatnonzero(holders == number)])
            self._changed.add(int(number))
        return removed

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write the changed parts (each atomically), then index.json with the new counts.

        Args:
            path: the index's own folder (default); a sharded index is saved in place.

        Raises:
            ConfigError: `path` is another folder (copy the folder to move an index).
        """
        if path is not None and os.path.abspath(os.fspath(path)) != self.path:
            raise ConfigError(f"a sharded index is saved in place ({self.path}), not to {os.fspath(path)}: "
                              "copy the folder to move it")
        for number in sorted(self._changed):
            self._part(number).save(os.path.join(self.path, self.parts[number]))
        self._changed.clear()
        self._write_description()

    def _write_description(self) -> None:
        info = self.describe()
        info["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_index_json(self.path, info)
        self.info = info
        self._counts = [int(p["count"]) for p in info["parts"]]
