"""imgfeat on a Spark DataFrame you already have: `imgfeat.spark.extract(df) -> DataFrame`.

    df = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load("hdfs:///photos")
    features = imgfeat.spark.extract(df)              # content + path columns found by name
    features.write.parquet("hdfs:///features")        # Spark's own writer

Each Python worker builds the models once (cached by the configuration) and reuses them
for every Arrow batch of every task it runs. Bad images are rows with status "error".

For a whole run with resume and the shard layout of the local runner, use the CLI:
`imgfeat extract SRC -o OUT --engine spark`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from .config import PipelineConfig
from .errors import MissingExtra
from .frames import TableColumns, choose_columns, table_features
from .runners.tasks import with_threads
from .schema import output_schema


def spark_output_schema(dtype: str = "float32", whole_image: bool = True, objects: bool = False) -> Any:
    """The output schema as Spark types: fixed-size lists become arrays, fixed binary binary
    (inside the `objects` column's structs too).

    Spark has no 16-bit float, so float16 embeddings are widened to float32 here.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(_spark_arrow_schema(output_schema(1, 1, dtype, whole_image, objects)))


def _spark_arrow_type(kind: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(kind):
        return pa.list_(pa.float32())
    if pa.types.is_fixed_size_binary(kind):
        return pa.binary()
    if pa.types.is_list(kind):
        return pa.list_(_spark_arrow_type(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _spark_arrow_type(f.type), f.nullable) for f in kind])
    return kind


def _spark_arrow_schema(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(field.name, _spark_arrow_type(field.type), field.nullable) for field in schema])


def _batch_function(config: PipelineConfig, columns: TableColumns) -> Callable:
    def process(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        task_config = with_threads(config, context.cpus() if context else 1)
        size = config.chunk_size
        for batch in batches:
            for start in range(0, batch.num_rows, size):
                table = table_features(pa.Table.from_batches([batch.slice(start, size)]), task_config, columns)
                table = table.cast(_spark_arrow_schema(table.schema))
                yield from table.to_batches()

    return process


def extract(df: Any, path_col: str | None = None, content_col: str | None = None,
            id_col: str | None = None, config: PipelineConfig | None = None, **options: Any) -> Any:
    """Features of the images in a DataFrame, as a DataFrame in the output schema.

    Args:
        df: a DataFrame with image bytes (e.g. `spark.read.format("binaryFile")`, or a Parquet
            table with a binary column) and/or paths/URLs the workers can read.
        path_col: column of paths; found by name ("path", "uri", "url", ...) when omitted.
            Ids are the SHA-1 of the path, as in the local runner ("file:" prefixes removed).
        content_col: column of bytes; "content" or "bytes" when omitted. Without one, the
            workers read the paths (a missing file is a "not-found" row).
        id_col: column of your own ids (needed when there is no path column).
        config: a PipelineConfig; or flat options as in `imgfeat.extract` (`detector="none"`).

    Returns:
        A lazy DataFrame: id, path, status, error, width, height, box, label, score, crop,
        embedding, code, detector, embedder, hasher (arrays for box and embedding, binary code).
        Write it with Spark's writers, e.g. `.write.parquet(path)`.

    Raises:
        MissingExtra: pyspark is not installed.
        ConfigError: bad options, or columns that are missing or cannot be found.

    Example:
        >>> features = imgfeat.spark.extract(spark.read.format("binaryFile").load("photos/"))  # doctest: +SKIP
        >>> features.write.parquet("features/")  # doctest: +SKIP
    """
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("pyspark", extra="spark", purpose="imgfeat.spark") from exc
    config = PipelineConfig.resolve(config, options)
    columns = choose_columns(df.columns, path_col, content_col, id_col)
    wanted = [c for c in dict.fromkeys((columns.id, columns.path, columns.content)) if c]
    from .runners.spark import quiet_pandas_warning

    with quiet_pandas_warning():
        return df.select(*wanted).mapInArrow(_batch_function(config, columns),
                                             spark_output_schema(config.embed.dtype, config.embed.whole_image,
                                                                 config.detect.objects > 0))


__all__ = ["extract", "spark_output_schema"]
