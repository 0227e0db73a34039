"""imgfeat inside your own Apache Beam pipelines (needs imgfeat[beam]).

    rows = paths | imgfeat.beam.ExtractFeatures(config)          # str paths/URLs, or (id, bytes)
    rows | beam.io.WriteToParquet("out/part", imgfeat.beam.feature_schema(config))

    results = images | RunInference(imgfeat.beam.ImgfeatModelHandler(config))
    split = rows | imgfeat.beam.SplitErrors(max_error_ratio=0.05)  # split.ok, split.errors

Each worker process loads the detector and embedder once (`DoFn.setup` / RunInference's
shared handle, both through `cached_pipeline`); the elements are batched (`BatchElements`)
and go through the local runner's stages (`stages.ReadDecode`, `stages.Features`), so the
rows are the local runner's. A bad image is a row with status "error" and a reason;
`SplitErrors` routes those rows to a dead-letter output and fails the pipeline when more
than a given share of the inputs failed. For a whole run with shards, a manifest and resume,
use `imgfeat extract SRC -o OUT --engine beam [--runner DataflowRunner ...]`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

try:
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult
except ImportError as exc:  # the module is the [beam] extra's: say how to get it
    from .errors import MissingExtra

    raise MissingExtra("apache-beam", extra="beam", purpose="imgfeat.beam") from exc
import pyarrow as pa

from .config import PipelineConfig
from .errors import ConfigError, TooManyErrors
from .frames import TableColumns, table_features
from .runners.base import ErrorBudget
from .runners.tasks import cached_pipeline, with_threads
from .schema import STATUS_ERROR
from .stages import Pipeline

Element = Any  # str (a path or URL the workers can read) or (id, bytes)


def feature_schema(config: PipelineConfig | None = None, **options: Any) -> pa.Schema:
    """The Arrow schema of the rows (for `beam.io.WriteToParquet`); loads the models here once.

    Args:
        config: a PipelineConfig; or flat options as in `imgfeat.extract`.
    """
    return cached_pipeline(PipelineConfig.resolve(config, options)).features.schema


def features_table(elements: Sequence[Element], config: PipelineConfig) -> pa.Table:
    """The output rows of a batch of elements, in the order of the elements.

    Paths are read by the worker (a missing file is a "not-found" row; ids are the SHA-1 of
    the path, as in the local runner); (id, bytes) pairs are decoded as they are.

    Raises:
        ConfigError: an element is neither a str nor an (id, bytes) pair.
    """
    paths, pairs, order = [], [], []
    for element in elements:
        if isinstance(element, str):
            order.append((0, len(paths)))
            paths.append(element)
        elif isinstance(element, (tuple, list)) and len(element) == 2 and isinstance(element[1], (bytes, type(None))):
            order.append((1, len(pairs)))
            pairs.append((str(element[0]), element[1]))
        else:
            raise ConfigError(f"ExtractFeatures takes paths (str) or (id, bytes) pairs, got {type(element).__name__}")
    if not pairs:
        return features_table_of_paths(paths, config)
    if not paths:
        return features_table_of_pairs(pairs, config)
    tables = [features_table_of_paths(paths, config), features_table_of_pairs(pairs, config)]
    return pa.concat_tables([tables[kind].slice(i, 1) for kind, i in order])


def features_table_of_paths(paths: Sequence[str], config: PipelineConfig) -> pa.Table:
    return table_features(pa.table({"path": pa.array(list(paths), pa.string())}), config,
                          TableColumns("path", None, None))


def features_table_of_pairs(pairs: Sequence[tuple[str, bytes | None]], config: PipelineConfig) -> pa.Table:
    table = pa.table({"id": pa.array([i for i, _ in pairs], pa.string()),
                      "content": pa.array([c for _, c in pairs], pa.binary())})
    return table_features(table, config, TableColumns(None, "content", "id"))


class _FeaturesFn(beam.DoFn):
    """Batches of elements in, rows (dicts) or one Arrow table per batch out."""

    def __init__(self, config: PipelineConfig, tables: bool):
        self.config, self.tables = config, tables

    def setup(self) -> None:
        cached_pipeline(self.config)  # the models, once per worker process

    def process(self, batch: Sequence[Element]) -> Iterable[Any]:
        table = features_table(batch, self.config)
        if self.tables:
            yield table
        else:
            yield from table.to_pylist()


class ExtractFeatures(beam.PTransform):
    """Paths/URLs or (id, bytes) pairs -> one row per input in the output schema (`schema.py`).

    Args:
        config: a PipelineConfig; or flat options as in `imgfeat.extract` (detector=, embedder=...).
        tables: emit one `pyarrow.Table` per batch (for `WriteToParquetBatched`) instead of
            one dict per row (for `WriteToParquet(path, feature_schema(config))`).
        threads: inference threads per worker (default: the config's, else all cores; give 1
            on Dataflow, which runs one worker process per vCPU).

    Rows of bad images have status "error" and a reason. When `config.run.max_error_ratio`
    is below 1, the pipeline fails once more than that share of the rows failed (see
    `SplitErrors` to route them to a dead-letter output instead of keeping them inline).

    Example:
        >>> with beam.Pipeline() as p:  # doctest: +SKIP
        ...     (p | beam.Create(["photos/a.jpg", "photos/b.jpg"])
        ...        | ExtractFeatures(detector="centernet-mbv3")
        ...        | beam.io.WriteToParquet("features/part", feature_schema(detector="centernet-mbv3")))
    """

    def __init__(self, config: PipelineConfig | None = None, *, tables: bool = False, threads: int = 0,
                 **options: Any):
        super().__init__()
        self.config = with_threads(PipelineConfig.resolve(config, options), threads)
        self.tables = tables

    def expand(self, elements: Any) -> Any:
        size = self.config.chunk_size
        rows = (elements
                | "batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=size)
                | "features" >> beam.ParDo(_FeaturesFn(self.config, self.tables)))
        if self.config.run.max_error_ratio < 1.0 and not self.tables:
            _ = rows | "error ratio" >> _CheckErrorRatio(self.config.run.max_error_ratio,
                                                         self.config.run.min_error_count)
        return rows


class ImgfeatModelHandler(ModelHandler):
    """A RunInference ModelHandler: examples are image bytes or paths/URLs, inferences are rows.

    The model is the detector + embedder + hasher (a `stages.Pipeline`), loaded once per worker
    process by RunInference. Each `PredictionResult.inference` is a row dict of the output
    schema; a bad image gives a row with status "error" (never an exception that would fail
    the whole batch). Ids: the SHA-1 of the path, or of the bytes; to carry your own keys,
    wrap it: `KeyedModelHandler(ImgfeatModelHandler(...))` over (key, example) pairs.

    Args:
        config: a PipelineConfig; or flat options as in `imgfeat.extract`.
        threads: inference threads per worker (as in `ExtractFeatures`).

    Example:
        >>> from apache_beam.ml.inference.base import RunInference  # doctest: +SKIP
        >>> results = images | RunInference(ImgfeatModelHandler(embedder="mobilenet-v2"))  # doctest: +SKIP
        >>> split = results | SplitErrors(max_error_ratio=0.1)  # doctest: +SKIP
    """

    def __init__(self, config: PipelineConfig | None = None, *, threads: int = 0, **options: Any):
        super().__init__()
        self.config = with_threads(PipelineConfig.resolve(config, options), threads)

    def load_model(self) -> Pipeline:
        return cached_pipeline(self.config)

    def run_inference(self, batch: Sequence[bytes | str], model: Pipeline,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        elements = [e if isinstance(e, str) else (hashlib.sha1(e).hexdigest()[:16], bytes(e)) for e in batch]
        rows = features_table(elements, model.config).to_pylist()
        return [PredictionResult(example, row, model_id=row["embedder"]) for example, row in zip(batch, rows)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.config.chunk_size}

    def get_metrics_namespace(self) -> str:
        return "imgfeat"

    def get_num_bytes(self, batch: Sequence[bytes | str]) -> int:
        return sum(len(e) for e in batch)


def _row(element: Any) -> dict[str, Any]:
    """The row of an ExtractFeatures output or of a RunInference result (keyed or not)."""
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[1], PredictionResult):
        element = element[1]
    return element.inference if isinstance(element, PredictionResult) else element


class _Route(beam.DoFn):
    def process(self, element: Any) -> Iterable[Any]:
        if _row(element)["status"] == STATUS_ERROR:
            yield beam.pvalue.TaggedOutput("errors", element)
        else:
            yield element


class _CountErrors(beam.CombineFn):
    """(failed, total) over rows."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, counts: tuple[int, int], element: Any) -> tuple[int, int]:
        return counts[0] + (_row(element)["status"] == STATUS_ERROR), counts[1] + 1

    def merge_accumulators(self, accumulators: Iterable[tuple[int, int]]) -> tuple[int, int]:
        failed, total = zip(*accumulators) if accumulators else ((0,), (0,))
        return sum(failed), sum(total)

    def extract_output(self, counts: tuple[int, int]) -> tuple[int, int]:
        return counts


def _check(counts: tuple[int, int], ratio: float, min_count: int) -> tuple[int, int]:
    failed, total = counts
    ErrorBudget(ratio, min_count).check(total, failed, where="in the pipeline")
    return counts


class _CheckErrorRatio(beam.PTransform):
    """Fails the pipeline (TooManyErrors) when more than `ratio` of the rows are errors.

    Counted over the whole PCollection (global window, batch pipelines): the other steps
    may have written their output by then, as with Beam's own `with_exception_handling`
    threshold.
    """

    def __init__(self, ratio: float, min_count: int):
        super().__init__()
        self.ratio, self.min_count = ratio, min_count

    def expand(self, rows: Any) -> Any:
        return (rows | "count" >> beam.CombineGlobally(_CountErrors())
                | "check" >> beam.Map(_check, self.ratio, self.min_count))


class SplitErrors(beam.PTransform):
    """Rows (or RunInference results) -> `.ok` and `.errors` (the dead-letter output).

    Args:
        max_error_ratio: fail the pipeline with TooManyErrors when more than this share of
            the inputs failed (default 1.0: never).
        min_count: inputs needed before the ratio is judged.

    Example:
        >>> split = rows | SplitErrors(max_error_ratio=0.05)  # doctest: +SKIP
        >>> split.errors | beam.io.WriteToText("bad-images")  # doctest: +SKIP
    """

    def __init__(self, max_error_ratio: float = 1.0, min_count: int = 1):
        super().__init__()
        if not 0.0 <= max_error_ratio <= 1.0:
            raise ConfigError(f"max_error_ratio must be within [0, 1], got {max_error_ratio}")
        self.max_error_ratio, self.min_count = max_error_ratio, min_count

    def expand(self, rows: Any) -> Any:
        if self.max_error_ratio < 1.0:
            _ = rows | "error ratio" >> _CheckErrorRatio(self.max_error_ratio, self.min_count)
        return rows | "route" >> beam.ParDo(_Route()).with_outputs("errors", main="ok")


__all__ = ["ExtractFeatures", "ImgfeatModelHandler", "SplitErrors", "TooManyErrors", "feature_schema",
           "features_table"]
