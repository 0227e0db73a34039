"""`imgfeat train-whiten`: fit a PCA-whitening on a feature dataset's vectors (no labels)."""

from __future__ import annotations

import argparse

EPILOG = """\
Fits the top DIM principal directions of the dataset's vectors, each scaled by its variance
** -POWER (0.5 whitens, 0 only rotates and cuts), and writes them as a .npz file. Then
`imgfeat extract SOURCE -o OUT --whiten FILE` stores whitened DIM-d vectors (and codes of
them): less storage, and see docs/quality.md for what it does to retrieval. Fit on features
extracted without --whiten, from the same embedder; an index refuses to mix whitened and
unwhitened features.

examples:
  imgfeat train-whiten features/ -o whiten.npz --dim 256
  imgfeat train-whiten features/ -o whiten128.npz --dim 128 --vector object
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..whitening import DEFAULT_SHRINKAGE

    p = sub.add_parser("train-whiten", help="learn a PCA-whitening of the vectors (no labels)",
                       description="Fit a PCA-whitening on a feature dataset.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", help="the folder written by `imgfeat extract` (without --whiten)")
    p.add_argument("-o", "--output", required=True, help="the whitening file to write (.npz)")
    p.add_argument("--dim", type=int, default=256, help="dimensions kept (default 256)")
    p.add_argument("--vector", choices=("image", "object"), default="image",
                   help="fit on the whole-image vectors (default; the object ones where none are stored) "
                        "or the main-object ones")
    p.add_argument("--power", type=float, default=0.5,
                   help="variance exponent: 0.5 whitens (default), 0 is plain PCA")
    p.add_argument("--shrinkage", type=float, default=DEFAULT_SHRINKAGE,
                   help=f"variances are floored at this fraction of the largest (default {DEFAULT_SHRINKAGE:g})")
    p.set_defaults(handler=_train_whiten)


def _train_whiten(args: argparse.Namespace) -> int:
    from ..whitening import train_whiten

    whitening = train_whiten(args.features, args.output, dim=args.dim, vector=args.vector, power=args.power,
                             shrinkage=args.shrinkage)
    meta = whitening.meta
    print(f"{whitening.name}: {whitening.dim_in}-d {meta.get('embedder')} {meta.get('vector')} -> "
          f"{whitening.dim}-d, fitted on {meta.get('fitted_on')} vectors, "
          f"{100 * meta.get('variance_kept', 0):.1f}% of the variance kept")
    print(f"whitening: {args.output}  (imgfeat extract SOURCE -o OUT --whiten {args.output})")
    return 0
