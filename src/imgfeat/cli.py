"""The `imgfeat` command line. Flags map one to one onto PipelineConfig fields.

Exit codes: 0 the run finished (some images may be error rows: it says how many),
1 the run itself failed (bad configuration, unreachable input, too many errors), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__
from .config import DecodeConfig, DetectConfig, EmbedConfig, RunConfig, default_workers
from .errors import ImgfeatError

EPILOG_EXTRACT = """\
SOURCE may be a folder (recursive), a glob ('photos/**/*.jpg', quoted), a list file
(.txt one path per line, .csv with a path column), a Parquet file or folder (binary or
path column), or any fsspec URL (s3://, gs://, memory://) of those.

examples:
  imgfeat extract photos/ -o features/
  imgfeat extract 'photos/**/*.jpg' -o features/ --batch-size 16 --workers 2
  imgfeat extract listing.parquet --content-column image -o features/
  imgfeat extract photos/ -o features/ --no-detect --dtype float16

Rerunning the same command resumes: complete shards are skipped. Bad images become rows
with status 'error' and a reason; they never stop the run.
"""


def _add_extract(sub: argparse._SubParsersAction) -> None:
    d_dec, d_det, d_emb, d_run = DecodeConfig(), DetectConfig(), EmbedConfig(), RunConfig(workers=0)
    p = sub.add_parser("extract", help="extract features of images into a Parquet dataset",
                       description="Detect the main object of every image, crop it, embed it and "
                                   "write one row per input to a Parquet dataset.",
                       epilog=EPILOG_EXTRACT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder, glob, list file, Parquet, or fsspec URL")
    p.add_argument("-o", "--output", required=True, help="output folder or URL (Parquet shards)")
    g = p.add_argument_group("input")
    g.add_argument("--include", help="file-name patterns to keep, comma-separated ('*.jpg,*.png')")
    g.add_argument("--content-column", help="binary column holding image bytes (tables)")
    g.add_argument("--path-column", help="column holding paths or URLs (tables, CSV)")
    g.add_argument("--id-column", help="column holding your own ids (tables)")
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
    g.add_argument("--select", choices=("score", "score_area"), default=d_det.select,
                   help="main object: highest score, or highest score x area (default score)")
    g.add_argument("--margin", type=float, default=d_det.margin,
                   help=f"crop margin as a fraction of the box (default {d_det.margin})")
    g.add_argument("--dtype", choices=("float32", "float16"), default=d_emb.dtype, help="embedding storage type")
    g.add_argument("--code-bits", type=int, default=d_emb.code_bits, help=f"binary code length (default {d_emb.code_bits})")
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"images per model call (default: detector {d_det.batch_size}, embedder {d_emb.batch_size})")
    g.add_argument("--workers", type=int, default=None,
                   help=f"decode processes (default {default_workers()} here; 0 = in the main process)")
    g.add_argument("--threads", type=int, default=0, help="inference threads (default: all cores)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="inference device")
    g.add_argument("--shard-size", type=int, default=d_run.shard_size,
                   help=f"images per output file, the unit of resume (default {d_run.shard_size})")
    g.add_argument("--max-error-ratio", type=float, default=1.0,
                   help="exit 1 when more than this share of images fail (default 1.0: never)")
    g.add_argument("--overwrite", action="store_true", help="delete the output first and start over")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the run report as JSON")


def _extract(args: argparse.Namespace) -> int:
    from .api import extract

    options = dict(
        detector="none" if args.no_detect else args.detector, embedder=args.embedder,
        score_threshold=args.score_threshold, select=args.select, margin=args.margin,
        dtype=args.dtype, code_bits=args.code_bits, batch_size=args.batch_size,
        workers=args.workers, threads=args.threads, device=args.device,
        shard_size=args.shard_size, limit=args.limit, overwrite=args.overwrite,
        max_error_ratio=args.max_error_ratio, max_pixels=args.max_pixels, max_side=args.max_side,
        progress=not args.no_progress,
    )
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(unit="img", desc="extract", dynamic_ncols=True, file=sys.stderr)

    def progress(done: int, errors: int, todo: int) -> None:
        if bar.total != todo:
            bar.reset(total=todo)
        bar.update(done)
        bar.set_postfix(errors=errors, refresh=False)

    try:
        report = extract(args.source, args.output, include=args.include,
                         content_column=args.content_column, path_column=args.path_column,
                         id_column=args.id_column, on_progress=progress if bar is not None else None, **options)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report.errors.items())) or "none"
    print(f"{report.processed} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s): "
          f"{report.ok} ok, {report.failed} failed ({errors})"
          + (f"; {report.skipped} already done, skipped" if report.skipped else ""))
    print(f"features: {args.output}  (imgfeat info {args.output})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .api import info

    summary = info(args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = summary["status"]
    print(f"{summary['output']}: {summary['rows']} rows in {summary['shards']}/{summary['shards_expected']} "
          f"shards ({'complete' if summary['complete'] else 'INCOMPLETE: rerun extract to resume'})")
    print(f"  ok {status.get('ok', 0)}, error {status.get('error', 0)}")
    for kind, count in sorted(summary["errors"].items(), key=lambda kv: -kv[1]):
        print(f"    {kind}: {count}")
    models = summary.get("models") or {}
    digests = summary.get("model_digests") or {}
    print("  models: " + ", ".join(f"{k} {v}" + (f" ({digests[k]})" if digests.get(k) else "")
                                   for k, v in models.items()))
    print("  schema:")
    for field in summary.get("schema") or []:
        print(f"    {field}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import list_detectors, list_embedders

    if args.action == "prepare":
        from .models.embedders import prepare_mobilenet_v2

        path = prepare_mobilenet_v2(force=args.force)
        print(f"mobilenet-v2 embedder ready: {path}")
        return 0
    print("detectors: " + ", ".join(list_detectors()) + ", onnx:PATH")
    print("embedders: " + ", ".join(list_embedders()) + ", onnx:PATH, torchvision:NAME, timm:NAME")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgfeat",
        description="Turn image collections into searchable features: detect the main object, "
                    "crop, embed, hash, and store a Parquet table.")
    parser.add_argument("--version", action="version", version=f"imgfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_extract(sub)
    p = sub.add_parser("info", help="summarise a feature dataset: rows, errors, schema, models")
    p.add_argument("output", help="the folder written by `imgfeat extract`")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p = sub.add_parser("models", help="list models, or prepare (export) the default embedder")
    p.add_argument("action", nargs="?", choices=("list", "prepare"), default="list")
    p.add_argument("--force", action="store_true", help="with prepare: export again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"extract": _extract, "info": _info, "models": _models}[args.command]
    try:
        return handler(args)
    except ImgfeatError as exc:
        print(f"imgfeat: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgfeat: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
