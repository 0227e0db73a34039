"""Search an index by image or by id; results as a DataFrame.

    import imgfeat
    index = imgfeat.load_index("index/")
    results = imgfeat.search(index, ["query.jpg"], k=10)  # query, id, path, score, rank, box, label
    results = imgfeat.search(index, ids=["3f2a9c0d1e4b5a67"])  # neighbours of an indexed image

A query image goes through the same decode -> detect -> crop -> embed as extraction did:
the `Features` stage is built from the PipelineConfig stored with the index (once per index),
so a photo that is in the index finds itself first with a score of ~1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import pyarrow.compute as pc

from ..config import ADDED_LATER, DecodeConfig, DetectConfig, EmbedConfig, PipelineConfig, RunConfig
from ..decode import Decoded, decode_image
from ..errors import ConfigError
from ..sources import Item
from ..schema import VECTOR_COLUMNS
from ..stages import Features, ImageBatch
from ..storage import ReadFailure, read_bytes
from .entries import best_per_row
from .index import FeatureIndex

RESULT_COLUMNS = ("query", "id", "path", "score", "rank", "box", "label", "error")
USING = ("embedding", "code")


def _known(cls: type, values: dict[str, Any] | None, stage: str = "") -> dict[str, Any]:
    """The recorded settings `cls` knows; those added since, at the value of the time."""
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in (values or {}).items() if k in names}
    if values is not None:
        for (where, name), then in ADDED_LATER.items():
            if where == stage and name not in known:
                known[name] = then
    return known


def query_config(index_config: dict[str, Any], device: str | None = None, threads: int = 0,
                 runtime: str | None = None, precision: str | None = None) -> PipelineConfig:
    """The PipelineConfig that embeds queries the way the index's features were made,
    with the runtime and precision the extraction recorded (indexes from before `precision`
    recorded "auto", which resolves here).

    Args:
        index_config: `FeatureIndex.config` (the PipelineConfig dict from the features' manifest).
        device: override the extraction device ("cpu" or "cuda"); default: the extraction's
            (another device resolves runtime and precision for it).
        threads: inference threads (0: the runtime decides).
        runtime, precision: override the recorded ones; a runtime alone sets the precision
            to "auto". Without overrides, a recorded OpenVINO this machine cannot run falls
            back to fp32 (a bf16 index on a CPU without bf16: with a RuntimeWarning).

    Raises:
        ConfigError: the index carries no extraction config.
    """
    if not index_config:
        raise ConfigError("this index carries no extraction config, so query images cannot be embedded "
                          "the way its images were; rebuild it from an `imgfeat extract` output")
    run = _known(RunConfig, index_config.get("run"))
    # one query batch at a time: one inference stream with every core (unless threads says)
    run.update(workers=0, progress=False, limit=0, overwrite=False, threads=threads, streams=1)
    # queries compute as the index's rows did: the runtime and precision it recorded (bf16
    # and fp32 embeddings differ by up to 1 - 0.991 in cosine), never "auto" re-resolved here
    if device and device != run.get("device", "cpu"):
        run.update(device=device, runtime="auto", precision="auto")  # an explicit move
    if runtime:
        run.update(runtime=runtime, precision="auto")  # the recorded precision may not exist there
    if precision:
        run["precision"] = precision
    if not (runtime or precision or device):
        _fall_back_where_unavailable(run)
    embed = _known(EmbedConfig, index_config.get("embed"), "embed")
    hasher = embed.get("hasher", "rproj")
    if hasher != "rproj" and not os.path.exists(hasher):
        # a learned hash file that is not on this machine: float search does not need it, and
        # code search checks the hasher name against the index's before it compares codes
        embed["hasher"] = "rproj"
    return PipelineConfig(
        decode=DecodeConfig(**_known(DecodeConfig, index_config.get("decode"))),
        detect=DetectConfig(**_known(DetectConfig, index_config.get("detect"), "detect")),
        embed=EmbedConfig(**embed),
        run=RunConfig(**run),
    )


def _fall_back_where_unavailable(run: dict[str, Any]) -> None:
    """Recorded OpenVINO where it cannot run here: fp32 and int8 move to onnxruntime (the same
    model file; fp32 cosine >= 0.9999), bf16 on a CPU without it to fp32 with a warning (query
    embeddings then differ from the rows' by up to ~0.01 in cosine)."""
    from ..models.runtimes import openvino_available, openvino_has_bf16

    if run.get("runtime") != "openvino" or run.get("device", "cpu") != "cpu":
        return
    if run.get("precision") == "bf16" and not openvino_has_bf16():
        warnings.warn("this index was computed in bf16, which this machine cannot compute (no native "
                      "bf16 or no OpenVINO): queries are embedded in fp32, so their similarities move "
                      "by up to ~0.01", RuntimeWarning, stacklevel=3)
        run.update(runtime="auto", precision="fp32")
    elif not openvino_available():
        # int8 stays int8: onnxruntime runs the same quantised file
        run.update(runtime="onnxruntime", precision="int8" if run.get("precision") == "int8" else "fp32")


_QUERY_FEATURES: "OrderedDict[str, Features]" = OrderedDict()
_KEEP_FEATURES = 2  # pipelines kept loaded, most recently used first out of the door last


def query_features(index: FeatureIndex) -> Features:
    """The `Features` stage for an index's queries, built once per extraction config and kept.

    Indexes built from the same extraction settings share one loaded pipeline (the two most
    recently used configs stay loaded).

    Raises:
        ConfigError: the index has no extraction config, or its embedder's size differs.
        UnknownModel, ModelUnavailable: the models cannot be built here.
    """
    key = json.dumps([index.config, index.crop], sort_keys=True, default=str)
    features = _QUERY_FEATURES.get(key)
    if features is None:
        config = query_config(index.config)
        if index.crop == "whole-image":  # whole-image vectors: a query needs no detection
            config = dataclasses.replace(config, detect=dataclasses.replace(config.detect, model="none", objects=0))
        elif index.crop == "object":  # one vector per query: its other objects are not searched
            config = dataclasses.replace(config, detect=dataclasses.replace(config.detect, objects=0))
        features = Features(config)
        _QUERY_FEATURES[key] = features
        while len(_QUERY_FEATURES) > _KEEP_FEATURES:
            _QUERY_FEATURES.popitem(last=False)
    _QUERY_FEATURES.move_to_end(key)
    if features.dim != index.dim:
        raise ConfigError(f"the index holds {index.dim}-d vectors but the embedder "
                          f"{features.models['embedder']!r} gives {features.dim}-d ones")
    return features


def _read(image: str | bytes | os.PathLike, config: DecodeConfig) -> tuple[str, Decoded]:
    """(query label, Decoded) for a path/URL or raw bytes; failures become Decoded errors."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "", decode_image(bytes(image), config)
    path = os.fspath(image)
    try:
        content = read_bytes(path, config.max_bytes)
    except ReadFailure as failure:
        return path, Decoded(None, error=failure.reason)
    return path, decode_image(content, config)


def embed_queries(index: FeatureIndex, images: Sequence[str | bytes | os.PathLike]) -> tuple[list[str], Any]:
    """Run query images through the index's pipeline.

    Returns:
        (query labels, Arrow table in the output schema: one row per image, errors included).
    """
    features = query_features(index)
    labels, items, decoded = [], [], []
    for i, image in enumerate(images):
        label, result = _read(image, features.config.decode)
        labels.append(label or f"image-{i}")
        items.append(Item(f"query-{i}", labels[-1]))
        decoded.append(result)
    return labels, features(ImageBatch(items, decoded))


def search(index: FeatureIndex, images: Sequence[str | bytes | os.PathLike] | None = None,
           ids: Sequence[str] | None = None, k: int = 10, *, using: str = "embedding",
           exclude_self: bool = False) -> Any:
    """Find the k most similar indexed images of each query image or indexed id.

    Args:
        index: a FeatureIndex.
        images: paths/URLs or encoded bytes; each is decoded, its main object detected,
            cropped and embedded with the models and settings the index was built from.
        ids: ids already in the index to use as queries (their stored vectors).
        k: neighbours per query.
        using: "embedding" (cosine similarity) or "code" (Hamming distance on the binary
            codes; the score is then 1 - distance / bits).
        exclude_self: drop each id query from its own results.

    Returns:
        pandas.DataFrame with columns query, id, path, score, rank (1 = best), box, label,
        error: k rows per query; a query image that cannot be decoded gives one row with
        `error` set and no id.

    Raises:
        UnknownId: an id query is not in the index.
        ConfigError: neither images nor ids, a bad `using`, or models that do not fit the index.
    """
    import pandas as pd

    if using not in USING:
        raise ConfigError(f"using must be one of {', '.join(USING)}, got {using!r}")
    if not images and not ids:
        raise ConfigError("give query images or ids")
    rows: list[dict[str, Any]] = []
    if images:
        labels, table = embed_queries(index, list(images))
        errors = table.column("error").to_pylist()
        good = [i for i, e in enumerate(errors) if e is None]
        if using == "code":
            _check_hasher(index, table.column("hasher")[0].as_py() if table.num_rows else None)
        queries, owners = query_values(table, good, using, index)
        found = dict(zip(good, search_rows(index, queries, owners, len(good), k, using)))
        for i, label in enumerate(labels):
            if errors[i] is not None:
                rows.append({"query": label, "id": None, "path": None, "score": np.nan, "rank": None,
                             "box": None, "label": None, "error": errors[i]})
            else:
                rows.extend(_rows(index, label, *found[i]))
    if ids:
        ids = [str(i) for i in ids]
        entries = [index.expand_ids([i]) for i in ids]
        flat = [e for group in entries for e in group]
        queries = index.vectors(flat) if using == "embedding" else index.codes(flat)
        owners = np.repeat(np.arange(len(ids)), [len(group) for group in entries])
        found = search_rows(index, queries, owners, len(ids), k, using, exclude=ids if exclude_self else None)
        for query_id, result in zip(ids, found):
            rows.extend(_rows(index, query_id, *result))
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    frame["rank"] = frame["rank"].astype("Int64")
    frame["score"] = frame["score"].astype("float64")
    return frame


def _check_hasher(index: FeatureIndex, query_hasher: str | None) -> None:
    if query_hasher and index.models.get("hasher") and query_hasher != index.models["hasher"]:
        raise ConfigError(f"query codes come from hasher {query_hasher!r} but the index holds "
                          f"{index.models['hasher']!r} codes (is the learned hash file missing here?); "
                          "search with using='embedding'")


def query_columns(table: Any, index: FeatureIndex) -> tuple[str, str]:
    """The query table's (vector, code) columns that match what `index` holds."""
    if index.crop == "whole-image" and "image_embedding" in table.column_names:
        return VECTOR_COLUMNS["image"]
    return VECTOR_COLUMNS["object"]


def query_values(table: Any, good: list[int], using: str, index: FeatureIndex) -> tuple[np.ndarray, np.ndarray]:
    """(vectors or codes, the position in `good` each came from): one per query image, or one per
    object of each query image for an index of objects."""
    if index.crop == "objects" and "objects" in table.column_names:
        objects = table.column("objects").take(good).combine_chunks()
        owners = pc.list_parent_indices(objects).to_numpy()
        found = pc.list_flatten(objects)
        column = found.field("embedding" if using == "embedding" else "code")
    else:
        owners = np.arange(len(good))
        vector, code = query_columns(table, index)
        column = table.column(vector if using == "embedding" else code).take(good).combine_chunks()
    if using == "embedding":
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(owners), -1).astype(np.float32), owners
    return np.frombuffer(b"".join(column.to_pylist()), np.uint8).reshape(len(owners), -1), owners


def _search(index: FeatureIndex, queries: np.ndarray, k: int, using: str) -> tuple[Any, Any]:
    """(scores, ids) per query; Hamming distances become similarities 1 - d / bits."""
    if using == "embedding":
        return index.search(queries, k)
    distances, neighbours = index.search_codes(queries, k)
    similarities = 1.0 - distances.astype(np.float64) / (index.code_bytes * 8)
    similarities[distances < 0] = np.nan
    return similarities, neighbours


def search_rows(index: FeatureIndex, queries: np.ndarray, owners: np.ndarray, count: int, k: int, using: str,
                 exclude: Sequence[str] | None = None) -> list[tuple[list[float], list[str], list[str]]]:
    """Per query (0..count-1): (scores, row ids, matched entries) of its k best rows. `owners`
    says which query each row of `queries` belongs to (ascending); an objects index's rows score their best
    pair of objects (entries.best_per_row). `exclude`: per query, a row id to leave out."""
    if not count:
        return []
    per_row = max(1, int((index.config.get("detect") or {}).get("objects") or 1)) if index.crop == "objects" else 1
    fetch = (k + (1 if exclude else 0)) * per_row  # enough entries for k rows even if each row matches K times
    scores, neighbours = _search(index, queries, fetch, using) if len(queries) else ([], [])
    out = []
    bounds = np.searchsorted(owners, np.arange(count + 1))  # owners ascend: each query's rows are a run
    for query in range(count):
        mine = range(bounds[query], bounds[query + 1])
        best_scores, row_ids, entries = best_per_row([scores[r] for r in mine], [neighbours[r] for r in mine],
                                                     fetch, objects=index.crop == "objects")
        kept = [j for j, r in enumerate(row_ids) if exclude is None or r != exclude[query]][:k]
        out.append(([best_scores[j] for j in kept], [row_ids[j] for j in kept], [entries[j] for j in kept]))
    return out


def _rows(index: FeatureIndex, query: str, scores: Sequence[float], row_ids: Sequence[str],
          entries: Sequence[str]) -> list[dict[str, Any]]:
    """Result rows; the metadata (path, box, label) is the matched entry's: of an objects index,
    the object that matched."""
    metadata = index.metadata(list(entries))
    return [{"query": query, "id": r, "path": m["path"], "score": float(s), "rank": rank,
             "box": m["box"], "label": m["label"], "error": None}
            for rank, (s, r, m) in enumerate(zip(scores, row_ids, metadata), start=1)]
