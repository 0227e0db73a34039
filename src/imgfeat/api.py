"""The Python API that mirrors the CLI: extract, info, index, search, dedup, read_features.

    report = imgfeat.extract("photos/", "features/")
    imgfeat.info("features/")                      # counts, errors by kind, models
    frame = imgfeat.read_features("features/").to_pandas()
    index = imgfeat.index("features/", "index/")   # or imgfeat.load_index("index/")
    hits = imgfeat.search(index, ["query.jpg"], k=5)
    groups = imgfeat.dedup("features/", threshold=0.85)
    card = imgfeat.finetune("photos/", "tuned/", steps=300)   # then embedder="onnx:tuned/embedder.onnx"
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import PipelineConfig
from .dataset import FeatureDataset, open_features
from .errors import OutputError, SourceError
from .runners import RunReport, get_runner
from .sources import Source, check_output_apart, open_source
from .storage import check_writable_location

if TYPE_CHECKING:
    from .retrieval.index import FeatureIndex
    from .retrieval.sharded import ShardedIndex


def extract(source: str | os.PathLike | Source, output: str | os.PathLike, *,
            config: PipelineConfig | None = None, engine: str = "local",
            include: str | None = None, content_column: str | None = None,
            path_column: str | None = None, id_column: str | None = None,
            table: str | None = None, query: str | None = None,
            on_progress: Callable[[int, int, int], None] | None = None,
            engine_options: dict[str, Any] | None = None, **options: Any) -> RunReport:
    """Extract features of every image in `source` into a Parquet dataset at `output`.

    Args:
        source: folder, glob, list file, Parquet file/folder, tar/zip archive, WebDataset shards,
            SQL database URL (with table or query), fsspec URL, or an opened Source.
        output: folder or fsspec URL; rerunning the same call resumes it.
        config: a full PipelineConfig; or give flat options instead, e.g. `batch_size=16`,
            `detector="none"`, `embedder="onnx:my.onnx"`, `workers=2`, `limit=100`,
            `dtype="float16"`, `overwrite=True` (see `PipelineConfig.from_options`).
        engine: "local" (default), or a distributed engine registered in imgfeat.runners.
        engine_options: passed to the engine's runner (e.g. {"master": "local[4]"}).
        include, content_column, path_column, id_column: how to read the source.
        table, query: for a SQL database URL source: the table or SELECT to read.
        on_progress: callback(images_done_in_batch, errors_so_far, images_to_do).

    Returns:
        RunReport: counts, errors by kind, seconds, per-stage timings.

    Raises:
        SourceError, ConfigError, OutputError, MissingExtra, ModelUnavailable, TooManyErrors.

    Example:
        >>> report = imgfeat.extract("photos/", "features/", detector="none")  # doctest: +SKIP
        >>> report.ok, report.failed  # doctest: +SKIP
    """
    config = PipelineConfig.resolve(config, options)
    runner = get_runner(engine)
    if not isinstance(source, Source):
        source = open_source(os.fspath(source), include=include, content_column=content_column,
                             path_column=path_column, id_column=id_column, table=table, query=query)
    check_output_apart(source, os.fspath(output))
    check_writable_location(os.fspath(output))
    bar = None
    if on_progress is None and config.run.progress:
        from .progress import ProgressBar

        bar = ProgressBar("extract", unit="img")
        on_progress = bar
    try:
        return runner(source, os.fspath(output), config, on_progress=on_progress, **(engine_options or {}))
    finally:
        if bar is not None:
            bar.close()


def info(output: str | os.PathLike) -> dict[str, Any]:
    """Summarise a feature dataset: rows, status and error counts, schema, models, completeness.

    Works on any Parquet with the output schema; without a manifest (e.g. written by
    `imgfeat.spark.extract(...).write.parquet`) the shard counts and models come from the rows.

    Raises:
        OutputError: nothing readable at `output`, or not imgfeat features.
    """
    from .stages import error_kind

    try:
        dataset = open_features(output)
    except SourceError as exc:
        raise OutputError(str(exc)) from exc
    manifest = dataset.manifest or {}
    expected = manifest.get("num_shards")
    status: Counter = Counter()
    errors: Counter = Counter()
    for batch in dataset.iter_batches(["status", "error"]):
        status.update(batch.column("status").to_pylist())
        errors.update(error_kind(e) for e in batch.column("error").to_pylist() if e)
    return {
        "output": os.fspath(output), "rows": sum(status.values()), "status": dict(status),
        "errors": dict(errors), "shards": len(dataset.files), "shards_expected": expected,
        "inputs": manifest.get("inputs"),
        "complete": len(dataset.files) == expected if expected is not None else None,
        "models": dataset.models, "model_digests": manifest.get("model_digests"),
        "schema": [f"{f.name}: {f.type}" for f in dataset.schema], "created": manifest.get("created"),
        "source": manifest.get("source"), "manifest": bool(dataset.manifest),
    }


def read_features(source: str | os.PathLike | Sequence[str | os.PathLike]) -> FeatureDataset:
    """A feature dataset to read: `.to_pandas()`, `.read(columns, status="ok")`, `.iter_batches()`.

    `source` is an output folder (local or fsspec URL), a Parquet file or a list of them.
    """
    return open_features(source)


def index(features: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None = None,
          *, kind: str = "auto", codes: bool = True, vector: str = "auto",
          shards: int = 1) -> "FeatureIndex | ShardedIndex":
    """Build a FAISS index over the ok rows of `features`, saved to `output` when given.

    See `imgfeat.retrieval.index.FeatureIndex.build` for kinds ("auto", "flat", "hnsw", "ivf",
    "ivfpq") and vectors ("object": the main object's, "image": the whole image's, "objects":
    every object of features extracted with `objects=K`, one entry each, ids "<row id>#<j>").
    `shards` > 1 builds that many parts one at a time into `output` (required), so memory holds
    one part (see `imgfeat.retrieval.sharded`); the result is searched like a single index.
    """
    from .errors import ConfigError
    from .retrieval.index import FeatureIndex

    if shards != 1:
        from .retrieval.sharded import build_sharded

        if output is None:
            raise ConfigError("a sharded index is written part by part: give the output folder")
        return build_sharded(features, output, shards, kind=kind, codes=codes, vector=vector)
    built = FeatureIndex.build(features, kind=kind, codes=codes, vector=vector)
    if output is not None:
        built.save(output)
    return built


def load_index(path: str | os.PathLike, *, mmap: bool = False) -> "FeatureIndex | ShardedIndex":
    """An index folder written by `imgfeat index` or `imgfeat.index(..., output)`, single or sharded.

    `mmap=True` maps a sharded index's vectors from its files instead of reading them (read-only).
    """
    from .retrieval.sharded import open_index

    return open_index(path, mmap=mmap)


def search(index: "FeatureIndex | ShardedIndex | str | os.PathLike", images: Sequence[Any] | None = None, *,
           k: int = 10, **options: Any) -> Any:
    """The `k` nearest indexed images of query images (paths, URLs or bytes) or ids (`ids=[...]`).

    Returns a pandas.DataFrame as `imgfeat search --csv` prints; see `imgfeat.retrieval.search.search`.
    """
    from .retrieval.search import search as run_search

    if not hasattr(index, "search"):
        index = load_index(index)
    return run_search(index, images, k=k, **options)


def finetune(source: str | os.PathLike, output: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Fine-tune the embedder on the images of `source`; export `output`/embedder.onnx for
    `extract(embedder="onnx:OUTPUT/embedder.onnx")`. Needs imgfeat[finetune].

    See `imgfeat.tuning.run.finetune` for the options (mode, backbone, cut_at, freeze_to, head_dim,
    loss, label_column, steps, batch_size, lr, workers, engine...). Returns the model card.
    """
    from .tuning import finetune as run_finetune

    return run_finetune(source, output, **options)


def dedup(source: Any, threshold: float | None = None, engine: str = "local", **options: Any) -> Any:
    """Near-duplicate groups of a feature dataset or index, as a pandas.DataFrame.

    See `imgfeat.retrieval.dedup.find_duplicates` for the options (reviews, representative, kind,
    using="code" with max_hamming for binary codes by Hamming distance); engine="spark" or "ray"
    groups feature folders on a cluster (`find_duplicates_spark` / `find_duplicates_ray`: the
    same groups; nlist, probes instead of kind).
    """
    from .retrieval.dedup import DEFAULT_THRESHOLD, dedup_engine

    return dedup_engine(engine)(source, DEFAULT_THRESHOLD if threshold is None else threshold, **options)
