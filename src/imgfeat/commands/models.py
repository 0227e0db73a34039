"""`imgfeat models`: list the registry, or prepare (export) the default embedder."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, or prepare (export) the default embedder",
                       description="List the registered detectors and embedders with what they are, "
                                   "or export the default embedder once (`prepare`).")
    p.add_argument("action", nargs="?", choices=("list", "prepare"), default="list")
    p.add_argument("--force", action="store_true", help="with prepare: export again")
    p.add_argument("--all", action="store_true", help="also list the tiny test-* models")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from ..models import model_entries

    if args.action == "prepare":
        from ..models.embedders import prepare_mobilenet_v2

        path = prepare_mobilenet_v2(force=args.force)
        print(f"mobilenet-v2 embedder ready: {path}")
        return 0
    listing = {kind: [{"name": e.name, "description": e.description, "input_size": e.input_size,
                       "licence": e.licence} for e in model_entries(kind) if args.all or not e.test]
               for kind in ("detector", "embedder")}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    own = {"detector": "onnx:PATH[,labels=FILE]  your own ONNX detector",
           "embedder": "onnx:PATH, torchvision:NAME, timm:NAME  your own or a hub model (needs internet)"}
    for kind, entries in listing.items():
        print(f"{kind}s:")
        width = max([len(e["name"]) for e in entries] + [10])
        for e in entries:
            extra = ", ".join(x for x in (e["input_size"], e["licence"]) if x)
            print(f"  {e['name']:<{width}}  {e['description']}" + (f" [{extra}]" if extra else ""))
        print(f"  {own[kind]}")
    if not args.all:
        print("(tiny test-* models hidden; --all shows them)")
    return 0
