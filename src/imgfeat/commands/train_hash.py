"""`imgfeat train-hash`: learn binary codes from a feature dataset (DeepBit, ITQ, random projection)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
The hash file (.onnx or .npz, by suffix) is a linear projection whose signs are the code;
`imgfeat extract --hash FILE` then writes those codes, and the manifest names the hash with
the first 8 hex digits of the file's SHA-256. Inference needs no torch; deepbit training does.

methods:
  itq      PCA to BITS dimensions + iterative rotation (numpy; BITS <= embedding size)
  deepbit  DeepBit objectives (quantisation, bit balance, view invariance) on a linear layer
  rproj    the seeded random projection, written as a file (the untrained baseline)

examples:
  imgfeat train-hash features/ -o hash.onnx --bits 64
  imgfeat train-hash features/ -o hash256.npz --bits 256 --method deepbit --views 8
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..hashtrain import DEFAULT_METHOD, METHODS, DeepBitSettings

    defaults = DeepBitSettings()
    p = sub.add_parser("train-hash", help="learn binary codes from a feature dataset (no labels)",
                       description="Train a projection from float embeddings to compact binary codes.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", help="the folder written by `imgfeat extract`")
    p.add_argument("-o", "--output", required=True, help="the hash file to write (.onnx or .npz)")
    p.add_argument("--bits", type=int, default=256, help="code length, a multiple of 8 (default 256)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"how to train it (default {DEFAULT_METHOD}: best in `imgfeat eval neardup`)")
    p.add_argument("--views", type=int, default=4,
                   help="augmented views per image, re-read from its path (default 4; 0 = none)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"deepbit epochs (default {defaults.epochs})")
    p.add_argument("--seed", type=int, default=0, help="seed of views and training (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train_hash)


def _train_hash(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..hashtrain import DeepBitSettings, train_hash

    if args.views < 0 or args.epochs < 1:
        raise ConfigError("--views must be >= 0 and --epochs >= 1")
    bar = None
    if not args.no_progress and args.views > 0 and args.method != "rproj":
        from tqdm import tqdm
        bar = tqdm(unit="img", desc="views", dynamic_ncols=True, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    try:
        hasher = train_hash(args.features, args.output, bits=args.bits, method=args.method, views=args.views,
                            seed=args.seed, settings=DeepBitSettings(epochs=args.epochs),
                            on_progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    meta = hasher.meta
    print(f"{hasher.name}: {hasher.dim}-d {meta.get('embedder')} embeddings -> {hasher.bits} bits, "
          f"trained on {meta.get('trained_on')} images x {meta.get('views')} views")
    if meta.get("final_losses"):
        print("  final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in meta["final_losses"].items()))
    print(f"hash: {args.output}  (imgfeat extract SOURCE -o OUT --hash {args.output})")
    return 0
