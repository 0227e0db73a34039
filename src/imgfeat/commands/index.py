"""`imgfeat index`: build a FAISS index from features, add shards to it, remove ids, describe it."""

from __future__ import annotations

import argparse
import json
import os
import time

EPILOG = """\
examples:
  imgfeat index features/ -o index/                 build (kind auto: exact below 100k vectors)
  imgfeat index features/ -o index/ --shards 8      build 8 parts one at a time (memory: one part);
                                                    --add to it builds one more part
  imgfeat index more-features/ -o index/ --add      add new shards; ids already there are skipped
  imgfeat index index/ --remove 3f2a9c0d1e4b5a67    delete ids
  imgfeat index index/                              describe an index

kinds: flat (exact), hnsw (graph), ivf (inverted lists, exact scores), ivfpq (compressed);
auto picks flat below 100 000 vectors, hnsw while the vectors fit in 8 GiB, ivfpq above.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, extend or prune a search index over features",
                       description="Index the embeddings (cosine) and binary codes (Hamming) of a "
                                   "feature dataset with FAISS, with the id mapping and metadata.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a feature folder (from `imgfeat extract`), or an index folder "
                                  "with --remove or nothing else")
    p.add_argument("-o", "--output", help="the index folder to write")
    p.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"),
                   help="float index kind (default auto)")
    p.add_argument("--add", action="store_true", help="add SOURCE's rows to the existing index at -o")
    p.add_argument("--remove", nargs="+", metavar="ID", help="delete these ids from the index SOURCE")
    p.add_argument("--vector", choices=("auto", "object", "image", "objects"), default="auto",
                   help="index the main objects' vectors (the same product elsewhere; the default unless "
                        "the features were extracted with --no-detect), the whole images' (copies), or every "
                        "stored object of features extracted with --objects K (a search matches any of them)")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="build N parts, one at a time, from groups of the feature files (memory holds one "
                        "part); search, serve and --remove use them together (default 1: one index)")
    p.add_argument("--no-codes", action="store_true", help="do not index the binary codes")
    p.add_argument("--json", action="store_true", help="print the index description as JSON")
    p.set_defaults(handler=_index)


def _index(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..dataset import INDEX_JSON
    from ..retrieval.index import FeatureIndex
    from ..retrieval.sharded import build_sharded, open_index

    started = time.perf_counter()
    if args.shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {args.shards}")
    if args.remove:
        if args.output or args.add:
            raise ConfigError("--remove works on the index given as SOURCE; drop -o/--add")
        index = open_index(args.source)
        removed = index.remove(args.remove)
        index.save(args.source)
        message = f"removed {removed} ids; {len(index)} left in {args.source}"
    elif not args.output:
        if not os.path.exists(os.path.join(args.source, INDEX_JSON)):
            raise ConfigError(f"{args.source} is not an index folder; to build one give -o INDEX")
        index = open_index(args.source)
        message = None
    elif args.add and os.path.exists(os.path.join(args.output, INDEX_JSON)):
        index = open_index(args.output, lazy=True)  # a sharded index adds a part without loading the others
        before = len(index)
        added, skipped = index.add(args.source)
        index.save(args.output)
        message = (f"added {added} vectors ({before} -> {len(index)}; {skipped} ids already there, "
                   f"skipped) to {args.output} in {time.perf_counter() - started:.1f} s")
    else:
        if args.shards > 1:
            index = build_sharded(args.source, args.output, args.shards, kind=args.kind, codes=not args.no_codes,
                                  vector=args.vector)
        else:
            index = FeatureIndex.build(args.source, kind=args.kind, codes=not args.no_codes, vector=args.vector)
            index.save(args.output)
        what = {"whole-image": "image", "objects": "object (every stored object)"}.get(index.crop, "object")
        message = (f"indexed {len(index)} {what} vectors "
                   f"({index.kind}, {index.dim}-d"
                   + (f", {index.code_bytes * 8}-bit codes" if index.code_bytes else "")
                   + (f", {args.shards} parts" if args.shards > 1 else "")
                   + f") into {args.output} in {time.perf_counter() - started:.1f} s")
    if args.json:
        print(json.dumps(index.describe(), indent=2))
        return 0
    if message:
        print(message)
    else:
        print(f"{args.source}: {index!r}")
        print("  models: " + ", ".join(f"{k} {v}" for k, v in index.models.items()))
        print(f"  params: {json.dumps(index.params)}")
        print(f"  sources: {', '.join(index.sources) or '-'}")
        if hasattr(index, "parts"):  # sharded
            print(f"  parts: {len(index.parts)} ({', '.join(str(p['count']) for p in index.describe()['parts'])} "
                  "vectors)")
    return 0
