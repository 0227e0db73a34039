"""The Python API that mirrors the CLI: `extract` and `info`."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Callable

from .config import PipelineConfig
from .errors import OutputError
from .runners import RunReport, get_runner
from .sources import Source, open_source


def extract(source: str | os.PathLike | Source, output: str | os.PathLike, *,
            config: PipelineConfig | None = None, engine: str = "local",
            include: str | None = None, content_column: str | None = None,
            path_column: str | None = None, id_column: str | None = None,
            on_progress: Callable[[int, int, int], None] | None = None,
            engine_options: dict[str, Any] | None = None, **options: Any) -> RunReport:
    """Extract features of every image in `source` into a Parquet dataset at `output`.

    Args:
        source: folder, glob, list file, Parquet file/folder, fsspec URL, or an opened Source.
        output: folder or fsspec URL; rerunning the same call resumes it.
        config: a full PipelineConfig; or give flat options instead, e.g. `batch_size=16`,
            `detector="none"`, `embedder="onnx:my.onnx"`, `workers=2`, `limit=100`,
            `dtype="float16"`, `overwrite=True` (see `PipelineConfig.from_options`).
        engine: "local" (default), or a distributed engine registered in imgfeat.runners.
        engine_options: passed to the engine's runner (e.g. {"master": "local[4]"}).
        include, content_column, path_column, id_column: how to read the source.
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
    if not isinstance(source, Source):
        source = open_source(os.fspath(source), include=include, content_column=content_column,
                             path_column=path_column, id_column=id_column)
    return get_runner(engine)(source, os.fspath(output), config, on_progress=on_progress,
                              **(engine_options or {}))


def info(output: str | os.PathLike) -> dict[str, Any]:
    """Summarise a feature dataset: rows, status and error counts, schema, models, completeness.

    Raises:
        OutputError: `output` has no manifest (not an imgfeat output).
    """
    import pyarrow.dataset as ds
    from fsspec.core import url_to_fs

    from .runners.local import error_kind
    from .sinks import MANIFEST

    output = os.fspath(output)
    fs, root = url_to_fs(output)
    manifest_path = f"{root.rstrip('/')}/{MANIFEST}"
    if not fs.exists(manifest_path):
        raise OutputError(f"{output} has no {MANIFEST}: not an imgfeat output (or not started)")
    with fs.open(manifest_path, "r") as fh:
        manifest = json.load(fh)
    files = sorted(p for p in fs.ls(root, detail=False)
                   if os.path.basename(p).startswith("part-") and p.endswith(".parquet"))
    summary: dict[str, Any] = {
        "output": output, "rows": 0, "status": {}, "errors": {}, "shards": len(files),
        "shards_expected": manifest.get("num_shards"), "inputs": manifest.get("inputs"),
        "complete": len(files) == manifest.get("num_shards"),
        "models": manifest.get("models"), "model_digests": manifest.get("model_digests"),
        "schema": manifest.get("schema"), "created": manifest.get("created"),
        "source": manifest.get("source"),
    }
    if files:
        dataset = ds.dataset(files, format="parquet", filesystem=fs)
        table = dataset.to_table(columns=["status", "error"])
        summary["rows"] = table.num_rows
        summary["status"] = dict(Counter(table.column("status").to_pylist()))
        summary["errors"] = dict(Counter(error_kind(e) for e in table.column("error").to_pylist() if e))
        summary["schema"] = [f"{f.name}: {f.type}" for f in dataset.schema]
    return summary
