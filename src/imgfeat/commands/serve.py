"""`imgfeat serve`: the HTTP API and web page over a saved feature index."""

from __future__ import annotations

import argparse
import ipaddress
import sys

LOOPBACK = "127.0.0.1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page: search by image, review duplicate groups",
                       description="Serve an index over HTTP: POST /embed, POST /search, GET /items/ID, "
                                   "GET /thumb/ID, GET /groups, POST /reviews, GET /healthz; the web "
                                   "page at /, the OpenAPI schema at /openapi.json (/docs to browse).")
    p.add_argument("--index", required=True, help="the index folder written by FeatureIndex.save")
    p.add_argument("--groups", help="groups Parquet written by `imgfeat dedup`, for the duplicates view")
    p.add_argument("--reviews", help="where 'not duplicate' verdicts go (default: reviews.jsonl beside "
                                     "--groups; `imgfeat dedup` reads it)")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1: this machine "
                                                    "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20)")
    p.add_argument("--max-pixels", type=int, help="largest image in pixels (default: the index's "
                                                  "extraction cap)")
    p.add_argument("--max-k", type=int, default=100, help="most neighbours one search returns (default 100)")
    p.add_argument("--batch-size", type=int, default=16, help="most images per model batch (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (default: the runtime's)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, MissingExtra

    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtra("uvicorn", "serve", "imgfeat serve") from exc
    from ..serve import ServeConfig, create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         max_k=args.max_k, batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
                         threads=args.threads)
    app = create_app(args.index, groups_path=args.groups, reviews_path=args.reviews, config=config)
    if not _is_loopback(args.host):
        print(f"imgfeat: warning: serving on {args.host}: anyone who can reach this address can use "
              f"the API and see the indexed images", file=sys.stderr)
    print(f"imgfeat: serving {len(app.state.service.index)} images on http://{args.host}:{args.port}/",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", ws="none")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
