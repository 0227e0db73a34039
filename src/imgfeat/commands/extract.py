"""`imgfeat extract`: run the pipeline over a source into a Parquet dataset."""

from __future__ import annotations

import argparse
import json
import os

from ..config import (
    PRECISION_CHOICES,
    DEFAULT_BATCH_SIZES, DecodeConfig, DetectConfig, EmbedConfig, RunConfig, default_streams, default_workers,
)

EPILOG_EXTRACT = """\
SOURCE may be a folder (recursive), a glob ('photos/**/*.jpg', quoted), a list file
(.txt one path per line, .csv with a path column), a Parquet file or folder (binary or
path column), a tar/zip archive or its members ('tar://**/*.jpg::photos.tar'), WebDataset
shards ('shards/{000..009}.tar', webdataset:SPEC, a local folder of only .tar files), a SQL
database URL with --table or --query, or any fsspec URL (s3://, gs://, memory://) of those.

examples:
  imgfeat extract photos/ -o features/
  imgfeat extract 'photos/**/*.jpg' -o features/ --workers 2 --streams 3
  imgfeat extract listing.parquet --content-column image -o features/
  imgfeat extract photos/ -o features/ --no-detect --dtype float16
  imgfeat extract 'shards/{000..009}.tar' -o features/
  imgfeat extract sqlite:///shop.db --table products --content-column image --id-column sku -o features/

Rerunning the same command resumes: complete shards are skipped. Bad images become rows
with status 'error' and a reason; they never stop the run.
"""


def register(sub: argparse._SubParsersAction) -> None:
    d_dec, d_det, d_emb, d_run = DecodeConfig(), DetectConfig(), EmbedConfig(), RunConfig(workers=0)
    p = sub.add_parser("extract", help="extract features of images into a Parquet dataset",
                       description="Detect the main object of every image, crop it, embed it and "
                                   "write one row per input to a Parquet dataset.",
                       epilog=EPILOG_EXTRACT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder, glob, list file, Parquet, tar/zip, WebDataset shards, SQL URL, "
                                  "or fsspec URL")
    p.add_argument("-o", "--output", required=True, help="output folder or URL (Parquet shards)")
    g = p.add_argument_group("input")
    g.add_argument("--include", help="file-name patterns to keep, comma-separated ('*.jpg,*.png')")
    g.add_argument("--content-column", help="binary column holding image bytes (tables)")
    g.add_argument("--path-column", help="column holding paths or URLs (tables, CSV)")
    g.add_argument("--id-column", help="column holding your own ids (tables, SQL); WebDataset: __key__ "
                                       "(default) or __shard__/__key__")
    g.add_argument("--table", help="SQL source (sqlite:///x.db, postgresql+psycopg://...): the table to read")
    g.add_argument("--query", help="SQL source: a SELECT giving the id and image (or path) columns")
    g.add_argument("--limit", type=int, default=0, help="process only the first N inputs")
    g.add_argument("--max-pixels", type=int, default=d_dec.max_pixels,
                   help=f"refuse images with more pixels (decompression bombs; default {d_dec.max_pixels})")
    g.add_argument("--max-side", type=int, default=d_dec.max_side,
                   help=f"decode at reduced size keeping the long side >= this (default {d_dec.max_side}; 0 = full)")
    g = p.add_argument_group("models")
    g.add_argument("--detector", default=d_det.model,
                   help=f"detector name or onnx:PATH (default {d_det.model}; see `imgfeat models`)")
    g.add_argument("--no-detect", action="store_true", help="skip detection, embed the whole image")
    g.add_argument("--embedder", default=d_emb.model,
                   help=f"embedder name, onnx:PATH, torchvision:NAME or timm:NAME (default {d_emb.model})")
    g.add_argument("--score-threshold", type=float, default=d_det.score_threshold,
                   help=f"minimum detection score (default {d_det.score_threshold})")
    g.add_argument("--select", choices=("score", "score_area", "stable"), default=d_det.select,
                   help=f"main object: the highest score, the highest score x area, or the largest of the "
                        f"detections within 0.1 of the best score (stable) (default {d_det.select})")
    g.add_argument("--margin", type=float, default=d_det.margin,
                   help=f"crop margin as a fraction of the box (default {d_det.margin})")
    g.add_argument("--detect-size", type=int, default=d_det.input_size, metavar="PX",
                   help="long side of the detector's input (default: the model's own, 512 for "
                        "centernet-mbv3, which takes multiples of 128; smaller is faster and misses small objects)")
    g.add_argument("--detect-square", action="store_true",
                   help="letterbox into the detector's square input instead of keeping the aspect ratio")
    g.add_argument("--objects", type=int, default=d_det.objects, metavar="K",
                   help="also store up to K detected objects per image (main first) with their own vectors in an "
                        "objects list column, for `index --vector objects` (default 0: the main object only; "
                        "each extra object costs one embedder pass)")
    g.add_argument("--no-image-vector", action="store_true",
                   help="store only the main object's vector, not also the whole image's (image_embedding)")
    g.add_argument("--image-square", action="store_true",
                   help="stretch whole images to the embedder's square input, as before 0.1.0's aspect change "
                        "(default: keep their aspect ratio, long side up to 2x the short one)")
    g.add_argument("--image-gray", action="store_true",
                   help="also average each whole image's grayscale rendition into its vector (one more "
                        "embedder pass per image; grayscale copies come closer)")
    g.add_argument("--dtype", choices=("float32", "float16"), default=d_emb.dtype, help="embedding storage type")
    g.add_argument("--code-bits", type=int, default=d_emb.code_bits, help=f"binary code length (default {d_emb.code_bits})")
    g.add_argument("--hash", default=d_emb.hasher, metavar="HASH",
                   help="binary code: 'rproj' (seeded random projection) or a learned hash file from "
                        "`imgfeat train-hash` (default rproj)")
    g.add_argument("--whiten", metavar="FILE",
                   help="apply a whitening from `imgfeat train-whiten` to every vector before hashing "
                        "(vectors shrink to its dimension, e.g. 1280 -> 256 floats)")
    g.add_argument("--embed-scales", type=lambda text: tuple(float(v) for v in text.split(",") if v.strip()),
                   default=d_emb.scales, metavar="S1,S2",
                   help="average each crop's vectors at these input-size factors, e.g. 1,0.71 "
                        "(needs --embedder mobilenet-v2-gem; default 1)")
    g.add_argument("--embed-flip", action="store_true", help="also average each crop's mirror image's vector")
    g = p.add_argument_group("execution")
    g.add_argument("--engine", default="local",
                   help="local (default: pipelined, this machine), spark, ray or beam (needs imgfeat[spark|ray|beam])")
    g.add_argument("--master", help="with --engine spark: the Spark master URL (default local[*] or $MASTER)")
    g.add_argument("--address", help="with --engine ray: the Ray cluster address (default local, or $RAY_ADDRESS)")
    g.add_argument("--runner", help="with --engine beam: the Beam runner (default DirectRunner; DataflowRunner, "
                                    "FlinkRunner, ...)")
    g.add_argument("--beam-option", action="append", default=[], metavar="OPTION",
                   help="with --engine beam: one Beam pipeline option, repeatable "
                        "(--beam-option=--project=p --beam-option=--temp_location=gs://b/tmp)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per call of both models (default per device, detector/embedder: " +
                        ", ".join(f"{d} {a}/{b}" for d, (a, b) in DEFAULT_BATCH_SIZES.items()) + ")")
    g.add_argument("--workers", type=int, default=None,
                   help=f"read + decode threads (default {default_workers()} here; 0 = in the calling thread)")
    g.add_argument("--streams", type=int, default=0,
                   help=f"batches in inference at once, one thread each (default {default_streams()} here)")
    g.add_argument("--threads", type=int, default=0,
                   help="inference threads per stream (default: the cores shared out among the streams)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="inference device")
    g.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="inference runtime (default auto: OpenVINO on CPUs with native bf16, else onnxruntime)")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="inference precision (default auto: bf16 where the runtime is OpenVINO on a CPU with "
                        "native bf16, else fp32; int8: both networks quantised once, calibrated on the "
                        "sample photos, docs/models.md); resolved once and recorded: a resumed output "
                        "keeps its own")
    g.add_argument("--shard-size", type=int, default=d_run.shard_size,
                   help=f"images per output file, the unit of resume (default {d_run.shard_size})")
    g.add_argument("--max-error-ratio", type=float, default=1.0,
                   help="stop and exit 1 when more than this share of images fail, checked once "
                        f"{d_run.min_error_count} are done and over the whole output (default 1.0: never)")
    g.add_argument("--retries", type=int, default=d_run.retries,
                   help=f"tries of a read that failed for a transient reason (unreachable, timeout; "
                        f"default {d_run.retries})")
    g.add_argument("--retry-errors", action="store_true",
                   help="recompute, in place, the rows of this output that failed for a transient reason")
    g.add_argument("--prune", action="store_true",
                   help="drop the rows of inputs no longer in the source (rerunning on a source that gained "
                        "inputs computes only those, with or without it)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over: delete imgfeat's own files in the output (never anything else)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the run report as JSON")
    p.set_defaults(handler=_extract)


def _extract(args: argparse.Namespace) -> int:
    from ..api import extract

    options = dict(
        detector="none" if args.no_detect else args.detector, embedder=args.embedder,
        score_threshold=args.score_threshold, select=args.select, margin=args.margin,
        detect_input_size=args.detect_size, keep_aspect=not args.detect_square, objects=args.objects,
        dtype=args.dtype, whole_image=not args.no_image_vector, image_aspect=not args.image_square,
        image_gray=args.image_gray, code_bits=args.code_bits,
        # absolute paths: search and serve read the hash and whitening files again from the
        # manifest, from whatever folder they run in
        hasher=args.hash if args.hash == "rproj" else os.path.abspath(args.hash), batch_size=args.batch_size,
        whiten=os.path.abspath(args.whiten) if args.whiten else None, scales=args.embed_scales, flip=args.embed_flip,
        workers=args.workers, streams=args.streams, threads=args.threads, device=args.device, runtime=args.runtime,
        precision=args.precision,
        shard_size=args.shard_size, limit=args.limit, overwrite=args.overwrite,
        max_error_ratio=args.max_error_ratio, retries=args.retries, retry_errors=args.retry_errors,
        prune=args.prune,
        max_pixels=args.max_pixels, max_side=args.max_side, progress=not args.no_progress,
    )
    engine_options = {k: v for k, v in (("master", args.master), ("address", args.address), ("runner", args.runner),
                                        ("pipeline_args", args.beam_option)) if v}
    report = extract(args.source, args.output, include=args.include, content_column=args.content_column,
                     path_column=args.path_column, id_column=args.id_column, table=args.table,
                     query=args.query, engine=args.engine,
                     engine_options=engine_options, **options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report.errors.items())) or "none"
    print(f"{report.processed} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s): "
          f"{report.ok} ok, {report.failed} failed ({errors})"
          + (f"; {report.skipped} already done, skipped" if report.skipped else "")
          + (f"; {report.retried} failed rows retried" if report.retried else "")
          + (f"; {report.pruned} rows of inputs gone pruned" if report.pruned else ""))
    print(f"features: {args.output}  (imgfeat info {args.output})")
    return 0


