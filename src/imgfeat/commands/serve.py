"""`imgfeat serve`: the HTTP API and web page over a saved feature index."""

from __future__ import annotations

import argparse
import os
import sys

LOOPBACK = "127.0.0.1"
TOKEN_ENV = "IMGFEAT_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page: search by image, review duplicate groups",
                       description="Serve an index over HTTP: POST /embed, POST /search, GET /items/ID, "
                                   "GET /thumb/ID, GET /groups, POST /reviews, GET /healthz; the web "
                                   "page at /, the OpenAPI schema at /openapi.json (--docs to browse it). "
                                   "See docs/serving.md for the security model.")
    p.add_argument("--index", required=True, help="the index folder written by `imgfeat index` (single or sharded)")
    p.add_argument("--mmap", action="store_true",
                   help="map a sharded index's vectors from its files instead of reading them into memory "
                        "(read-only; docs/search.md)")
    p.add_argument("--groups", help="groups Parquet written by `imgfeat dedup`, for the duplicates view")
    p.add_argument("--reviews", help="where 'not duplicate' verdicts go (default: reviews.jsonl beside "
                                     "--groups; `imgfeat dedup` reads it)")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1: this machine "
                                                    "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name clients reach the service by (the Host header), besides the --host address "
                        "and localhost; repeatable. Other Host headers get 421 (DNS rebinding)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                   help=f"require 'Authorization: Bearer TOKEN' on every route but /healthz (default: "
                        f"${TOKEN_ENV}; prefer the variable, a flag shows in `ps`). Required for a "
                        f"non-loopback --host; the page takes it as http://HOST:PORT/#token=TOKEN")
    p.add_argument("--no-token", action="store_true",
                   help="serve a non-loopback --host without a token: anyone who can reach it can use it")
    p.add_argument("--docs", action="store_true", help="serve /docs (Swagger UI, loaded from a CDN)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20)")
    p.add_argument("--max-pixels", type=int, help="largest image in pixels (default: 40 Mpx or the index's "
                                                  "extraction cap, whichever is smaller)")
    p.add_argument("--max-decodes", type=int, default=0, help="uploads decoded at once (default: the cores)")
    p.add_argument("--max-connections", type=int, default=32,
                   help="connections at once; more get 503 (default 32)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive (default 30; then 408)")
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

    from ..serve.security import is_loopback
    from ..serve.server import uvicorn_config

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if not is_loopback(args.host) and not args.token and not args.no_token:
        raise ConfigError(f"--host {args.host} opens the service to the network: set a token "
                          f"({TOKEN_ENV}=$(openssl rand -hex 16)), or pass --no-token to serve it to "
                          f"anyone who can reach the address")
    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         max_k=args.max_k, batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
                         threads=args.threads, max_decodes=args.max_decodes, allowed_hosts=tuple(args.allowed_host),
                         token=args.token, body_timeout_s=args.body_timeout, max_connections=args.max_connections,
                         docs=args.docs)
    index = args.index
    if args.mmap:
        from ..retrieval.sharded import open_index

        index = open_index(args.index, mmap=True)
    app = create_app(index, groups_path=args.groups, reviews_path=args.reviews, config=config, bind=args.host)
    service = app.state.service
    if not is_loopback(args.host) and not args.token:
        print(f"imgfeat: warning: serving on {args.host} without a token: anyone who can reach this "
              f"address can use the API, see the indexed images and write reviews", file=sys.stderr)
    if service.duplicates.reviews_problem:
        print(f"imgfeat: warning: {service.duplicates.reviews_problem}: the duplicates view is read-only "
              f"(POST /reviews answers 503)", file=sys.stderr)
    print(f"imgfeat: serving {len(service.index)} images on http://{args.host}:{args.port}/"
          + (" (token required)" if args.token else ""), file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, config, log_level="info")).run()
    return 0
