"""`imgfeat search`: the nearest indexed images of query images or indexed ids."""

from __future__ import annotations

import argparse
import json
import math
import sys

EPILOG = """\
examples:
  imgfeat search index/ query.jpg -k 5
  imgfeat search index/ --id 3f2a9c0d1e4b5a67 --exclude-self
  imgfeat search index/ a.jpg b.png --csv > results.csv

A query image goes through the same decode, detect, crop and embed as the indexed images
(the settings are stored with the index). Scores are cosine similarities (1 = identical).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the most similar indexed images",
                       description="Search an index by image (run through the same pipeline) or by id.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="an index folder written by `imgfeat index` (single or sharded)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files or URLs")
    p.add_argument("--id", action="append", dest="ids", metavar="ID", help="query by an indexed id (repeatable)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--using", choices=("embedding", "code"), default="embedding",
                   help="compare embeddings (cosine, default) or binary codes (Hamming)")
    p.add_argument("--mmap", action="store_true",
                   help="map a sharded index's vectors from its files instead of reading them (quicker to open "
                        "a large index for a few queries)")
    p.add_argument("--exclude-self", action="store_true", help="leave an --id query out of its own results")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON records")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    p.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..retrieval.search import search
    from ..retrieval.sharded import open_index

    if not args.images and not args.ids:
        raise ConfigError("give query IMAGEs or --id ID")
    index = open_index(args.index, mmap=args.mmap)
    results = search(index, args.images or None, ids=args.ids, k=args.k, using=args.using,
                     exclude_self=args.exclude_self)
    if args.json:
        print(json.dumps(_records(results), indent=2))
    elif args.csv:
        results.to_csv(sys.stdout, index=False)
    else:
        for query, rows in results.groupby("query", sort=False):
            print(f"{query}")
            for row in rows.to_dict("records"):
                if row["error"] is not None and not _is_nan(row["error"]):
                    print(f"  error: {row['error']}")
                    continue
                label = row["label"] if isinstance(row["label"], str) else "-"
                print(f"  {row['rank']:>3}  {row['score']:.4f}  {row['id']}  {label:<12} {row['path']}")
    return 0


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _records(results: object) -> list[dict]:
    records = []
    for row in results.to_dict("records"):  # type: ignore[attr-defined]
        records.append({k: (None if _is_nan(v) or v is None or (k == "rank" and str(v) == "<NA>") else
                            (int(v) if k == "rank" else v)) for k, v in row.items()})
    return records
