"""The `imgfeat` command line: one subcommand per module in `imgfeat.commands`.

Exit codes: 0 the run finished (some images may be error rows: it says how many),
1 the run itself failed (bad configuration, unreachable input, too many errors), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Sequence

from . import commands
from ._version import __version__
from .errors import ImgfeatError

# the order `imgfeat --help` lists them in; modules not named here follow alphabetically
_ORDER = ("extract", "info", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgfeat",
        description="Turn image collections into searchable features: detect the main object, "
                    "crop, embed, hash, and store a Parquet table.")
    parser.add_argument("--version", action="version", version=f"imgfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted((m.name for m in pkgutil.iter_modules(commands.__path__)),
                   key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ImgfeatError as exc:
        print(f"imgfeat: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgfeat: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgfeat info out/ | head`: the reader left, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
