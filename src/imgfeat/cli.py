"""The `imgfeat` command line: one subcommand per module in `imgfeat.commands`.

Exit codes: 0 the run finished (some images may be error rows: it says how many),
1 the run itself failed (bad configuration, unreachable input, too many errors), 2 usage.
"""

from __future__ import annotations

import argparse
import errno
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


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere, then rerun the same command to resume",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere, then rerun to resume",
    errno.EROFS: "the file system is read-only: write the output elsewhere",
    errno.EACCES: "permission denied: write the output where you may, or fix its permissions",
    errno.EPERM: "operation not permitted: write the output where you may",
    errno.EFBIG: "a file grew over the size this system allows: write elsewhere or use smaller shards",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    hint = _OS_HINTS.get(exc.errno or -1)
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}{where}" + (f"; {hint}" if hint else "")


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
    except OSError as exc:  # a full disk, a read-only or forbidden output: no traceback for these
        print(f"imgfeat: error: {os_error_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
