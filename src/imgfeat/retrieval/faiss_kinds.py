"""The kinds of FAISS float index imgfeat builds, each a small class: how to make it, train it,
search it and delete from it. `FeatureIndex` holds one and never branches on the kind.

    flat   IndexFlatIP: exact; the default below 100 000 vectors
    hnsw   IndexHNSWFlat: graph, fast and accurate, holds the full vectors (auto up to ~8 GiB);
           it cannot delete, so removed labels are filtered out at search time
    ivf    IndexIVFFlat: inverted lists of full vectors; exact scores, tunable nprobe
    ivfpq  IndexIVFPQ: compressed (about 64 bytes per vector); auto when the vectors would not fit
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingExtra

FLAT_MAX_VECTORS = 100_000  # auto: exact search below this (one query over 100k x 1280-d: ~10 ms)
HNSW_MAX_BYTES = 8 << 30  # auto: HNSW while the float vectors fit in this; IVF-PQ above
MIN_TRAIN_VECTORS = 1000  # ivf/ivfpq need this many vectors to train their quantisers


def faiss_module() -> Any:
    """`import faiss`, or MissingExtra naming the search extra."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in the search extra
        raise MissingExtra("faiss-cpu", "search", "indexing and search") from exc
    return faiss


class FlatKind:
    """Exact inner-product search; deletes in place."""

    name = "flat"
    trained = False
    filters_removed = False  # True: removal only hides labels at search time

    @staticmethod
    def default_params(count: int, dim: int) -> dict[str, Any]:
        return {}

    def new(self, dim: int, params: dict[str, Any]) -> Any:
        faiss = faiss_module()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def remove(self, index: Any, labels: np.ndarray) -> None:
        index.remove_ids(faiss_module().IDSelectorBatch(labels))

    def search_params(self, params: dict[str, Any], k: int, selector: Any = None) -> Any:
        return None


class HnswKind(FlatKind):
    """A navigable small-world graph of the full vectors; removal filters at search time."""

    name = "hnsw"
    filters_removed = True

    @staticmethod
    def default_params(count: int, dim: int) -> dict[str, Any]:
        return {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128}

    def new(self, dim: int, params: dict[str, Any]) -> Any:
        faiss = faiss_module()
        inner = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params["ef_construction"]
        return faiss.IndexIDMap2(inner)

    def remove(self, index: Any, labels: np.ndarray) -> None:
        raise AssertionError("HNSW cannot delete; FeatureIndex filters removed labels instead")

    def search_params(self, params: dict[str, Any], k: int, selector: Any = None) -> Any:
        search = faiss_module().SearchParametersHNSW()
        search.efSearch = max(int(params.get("ef_search", 128)), k)
        if selector is not None:
            search.sel = selector
        return search


class IvfKind(FlatKind):
    """Inverted lists over a trained coarse quantiser; exact scores within the lists visited."""

    name = "ivf"
    trained = True

    @staticmethod
    def default_params(count: int, dim: int) -> dict[str, Any]:
        nlist = int(min(65536, max(16, round(math.sqrt(max(count, 1))))))
        nlist = min(nlist, max(1, count // 39))  # faiss wants ~39 training points per list
        return {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}

    def _inner(self, faiss: Any, quantizer: Any, dim: int, params: dict[str, Any]) -> Any:
        return faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)

    def new(self, dim: int, params: dict[str, Any]) -> Any:
        faiss = faiss_module()
        index = self._inner(faiss, faiss.IndexFlatIP(dim), dim, params)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by label
        return index

    def remove(self, index: Any, labels: np.ndarray) -> None:
        faiss = faiss_module()
        index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))

    def search_params(self, params: dict[str, Any], k: int, selector: Any = None) -> Any:
        search = faiss_module().SearchParametersIVF()
        search.nprobe = int(params.get("nprobe", 16))
        return search


class IvfPqKind(IvfKind):
    """Inverted lists of product-quantised vectors: about 64 bytes a vector, approximate scores."""

    name = "ivfpq"

    @staticmethod
    def default_params(count: int, dim: int) -> dict[str, Any]:
        params = IvfKind.default_params(count, dim)
        params["pq_m"] = next(m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 2 or m == 1)
        params["pq_bits"] = 8  # 256 centroids per sub-quantiser (fewer loses too much recall)
        return params

    def _inner(self, faiss: Any, quantizer: Any, dim: int, params: dict[str, Any]) -> Any:
        return faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["pq_bits"],
                                faiss.METRIC_INNER_PRODUCT)


KINDS = {kind.name: kind for kind in (FlatKind(), HnswKind(), IvfKind(), IvfPqKind())}


def get_kind(name: str) -> FlatKind:
    """The kind called `name`.

    Raises:
        ConfigError: an unknown name.
    """
    if name not in KINDS:
        raise ConfigError(f"unknown index kind {name!r}; choose auto, {', '.join(KINDS)}")
    return KINDS[name]


def choose_kind(count: int, dim: int) -> str:
    """The float index "auto" picks for `count` vectors of `dim` floats."""
    if count < FLAT_MAX_VECTORS:
        return "flat"
    if count * dim * 4 <= HNSW_MAX_BYTES:
        return "hnsw"
    return "ivfpq"


def new_binary_index(code_bytes: int) -> Any:
    """An exact Hamming index of packed codes with int64 labels."""
    faiss = faiss_module()
    return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(code_bytes * 8))
