"""`imgfeat models`: list the registry, or prepare (export) the default embedder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, or prepare (export) the default embedder")
    p.add_argument("action", nargs="?", choices=("list", "prepare"), default="list")
    p.add_argument("--force", action="store_true", help="with prepare: export again")
    p.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from ..models import list_detectors, list_embedders

    if args.action == "prepare":
        from ..models.embedders import prepare_mobilenet_v2

        path = prepare_mobilenet_v2(force=args.force)
        print(f"mobilenet-v2 embedder ready: {path}")
        return 0
    print("detectors: " + ", ".join(list_detectors()) + ", onnx:PATH")
    print("embedders: " + ", ".join(list_embedders()) + ", onnx:PATH, torchvision:NAME, timm:NAME")
    return 0


