"""`imgfeat dedup`: near-duplicate groups of a feature dataset, as Parquet and an HTML report."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  imgfeat dedup features/ -o groups.parquet --html report.html     (whole images, cosine >= 0.85)
  imgfeat dedup index/ --threshold 0.95 -o groups.parquet --representative first
  imgfeat dedup features/ -o groups.parquet --engine spark      (MASTER=spark://host:7077 for a cluster)
  imgfeat dedup s3://bucket/features/ -o groups.parquet --engine ray --buckets 4096
  imgfeat dedup features/ -o groups.parquet --using code       (binary codes, Hamming <= 45 of 256 bits)
  imgfeat dedup features/ -o groups.parquet --using code --max-hamming 20 --engine spark

Pairs with cosine similarity >= THRESHOLD are joined into groups (connected components);
with --using code, pairs of binary codes at most --max-hamming bits apart (default: the
threshold's match, floor(bits * acos(THRESHOLD) / pi), as `imgfeat eval`).
--engine spark|ray gives the same groups on a cluster: vectors go to the --probes nearest of
--buckets k-means buckets, each bucket is joined exactly on the workers (docs/search.md).
Reviews in reviews.jsonl (beside the groups file unless --reviews says otherwise) keep the
ids of a "not-duplicate" record apart: tick them in the HTML report or the web service.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedup", help="group near-duplicate images; write groups and an HTML report",
                       description="Find every pair of images within a similarity threshold with a "
                                   "FAISS index, group them, pick a representative per group.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="+",
                   help="feature folders (from `imgfeat extract`, grouped together) or one index folder")
    p.add_argument("--threshold", type=float, default=0.85,
                   help="cosine similarity at or above which two images are duplicates (default 0.85)")
    p.add_argument("-o", "--output", required=True, help="the groups Parquet file to write")
    p.add_argument("--html", metavar="REPORT", help="also write an HTML report with thumbnails")
    p.add_argument("--max-groups", type=int, default=200, help="groups shown in the HTML report (default 200)")
    p.add_argument("--representative", choices=("largest", "first"), default="largest",
                   help="each group's representative: the most pixels (default) or the first indexed")
    p.add_argument("--reviews", metavar="FILE",
                   help="reviews JSON Lines file (default: reviews.jsonl beside the output)")
    p.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivfpq", "mih"),
                   help="index built for the search when SOURCE is features (default auto: flat below "
                        "100k vectors, else ivf; --using code: flat, mih (exact multi-index hashing) or ivf)")
    p.add_argument("--vector", choices=("auto", "image", "object"), default="auto",
                   help="compare whole images (copies: the default where the features hold them) or "
                        "the main objects (the same product in other photos)")
    p.add_argument("--using", choices=("embedding", "code"), default="embedding",
                   help="compare embeddings (cosine, default) or binary codes (Hamming distance; feature "
                        "folders only, --kind auto|flat|ivf)")
    p.add_argument("--max-hamming", type=int, metavar="N",
                   help="--using code: most differing bits of a duplicate pair (default: the --threshold's "
                        "match, floor(bits * acos(T) / pi): 45 of 256 bits at 0.85)")
    p.add_argument("--max-neighbors", type=int, default=100, help="neighbours kept per image (default 100)")
    p.add_argument("--engine", choices=("local", "spark", "ray"), default="local",
                   help="where to group: this process (default), Spark ($MASTER or local[*]) or Ray "
                        "($RAY_ADDRESS or a local instance); spark/ray read feature folders, not indexes")
    p.add_argument("--buckets", type=int, metavar="N",
                   help="spark/ray: k-means buckets (default sqrt(rows))")
    p.add_argument("--probes", type=int, metavar="N",
                   help="spark/ray: buckets each vector is compared in (default 8)")
    p.add_argument("--json", action="store_true", help="print the run's figures as JSON")
    p.set_defaults(handler=_dedup)


def _dedup(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..retrieval.dedup import dedup_engine, default_reviews_path, write_groups
    from ..retrieval.report import write_report

    reviews = args.reviews or default_reviews_path(args.output)
    source = args.source[0] if len(args.source) == 1 else args.source
    if args.engine == "local":
        if args.buckets is not None or args.probes is not None:
            raise ConfigError("--buckets and --probes are for --engine spark or ray (the local engine uses --kind)")
        options = {"kind": args.kind}
    else:
        if args.kind != "auto":
            raise ConfigError("--kind is for the local engine (spark and ray use --buckets and --probes)")
        options = {"nlist": args.buckets, "probes": args.probes or 8}
    if args.kind == "mih" and args.using != "code":
        raise ConfigError("--kind mih (multi-index hashing) is for --using code")
    if args.max_hamming is not None and args.using != "code":
        raise ConfigError("--max-hamming is for --using code (embeddings use --threshold)")
    if args.using == "code":
        options.update(using="code", max_hamming=args.max_hamming)
    groups = dedup_engine(args.engine)(source, args.threshold, representative=args.representative,
                                       reviews=reviews, max_neighbors=args.max_neighbors,
                                       vector=args.vector, **options)
    write_groups(groups, args.output)
    stats = dict(groups.attrs["stats"], output=args.output, reviews=reviews)
    if args.html:
        stats["html"] = args.html
        stats["groups_in_html"] = write_report(groups, args.html, max_groups=args.max_groups, stats=stats)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    within = (f"Hamming distance <= {stats['max_hamming']} of {stats['bits']} bits" if args.using == "code"
              else f"similarity >= {args.threshold}")
    print(f"{stats['groups']} groups ({stats['images_in_groups']} images) among {stats['vectors']} at "
          f"{within}: {stats['pairs']} pairs"
          + (f", {stats['pairs_dropped_by_reviews']} dropped by reviews" if stats["pairs_dropped_by_reviews"] else "")
          + f", {stats['seconds_total']:.1f} s")
    print(f"groups: {args.output}" + (f"  report: {args.html}" if args.html else ""))
    return 0
