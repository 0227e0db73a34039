"""`imgfeat eval neardup`: the near-duplicate benchmark (floats, binary codes, perceptual hashes)."""

from __future__ import annotations

import argparse
import json

from ..storage import atomic_write

EPILOG = """\
Builds a benchmark from real photos: queries are each photo resized, JPEG'd at quality
20-30, cropped to 70-90%, flipped, rotated, brightened/darkened, captioned, grayscaled and
a chain of those; the database is the photos plus random crops of them as distractors.
Reports top-1, mAP and precision/recall at the dedup threshold for the float embeddings,
every binary code (rproj, itq, deepbit at each --bits) and imagehash's 64-bit pHash,
dHash, wHash, aHash. Learned codes are trained in folds on crops of the other photos.
--vectors object,image scores the main object's vector and the whole image's side by side;
"objects" adds the sets of up to --objects K objects per image (extract --objects K): every
prefix K' = 1..K, an image matching an item through its closest pair of objects (max) or the
mean of its objects' closest matches (chamfer); keys objects<K'>-max/float, ...-chamfer/float,
objects<K'>-max/rproj-<bits>.
A variants/ folder inside --photos adds natural variants: variants/STEM@LABEL.jpg is another
rendition of the picture STEM (a photo, or variants/STEM.jpg, an extra database original).
--same-object N adds a task: N photos' main objects pasted into other photos; a paste must find
the other pastes of its object, not the other objects pasted into the same backgrounds.
scripts/fetch_eval_photos.sh downloads 61 photos and 9 variants for a larger run.

examples:
  imgfeat eval neardup
  imgfeat eval neardup --photos my_photos/ --json-out results.json
  imgfeat eval neardup --no-detect --bits 64,256
  imgfeat eval neardup --photos eval_photos/ --vectors object,image --same-object 12
  imgfeat eval neardup --vectors object,image,objects --objects 5 --methods rproj --bits 256
"""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluate import CODE_METHODS, PERCEPTUAL, EvalSettings

    d = EvalSettings()
    p = sub.add_parser("eval", help="measure retrieval quality (near-duplicate benchmark)",
                       description="Evaluate features on a benchmark.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=("neardup",), help="which benchmark (neardup)")
    p.add_argument("--photos", default=d.photos, help=f"folder of original photos (default {d.photos}/)")
    p.add_argument("--detector", default=d.detector, help=f"detector (default {d.detector})")
    p.add_argument("--no-detect", action="store_true", help="embed whole images (no detection)")
    p.add_argument("--embedder", default=d.embedder, help=f"embedder (default {d.embedder})")
    p.add_argument("--bits", type=_ints, default=d.bits, help="code lengths, comma-separated (default 64,128,256)")
    p.add_argument("--methods", type=_names, default=d.methods,
                   help=f"binary codes, comma-separated (default {','.join(CODE_METHODS)})")
    p.add_argument("--perceptual", type=_names, default=d.perceptual,
                   help=f"imagehash baselines (default {','.join(PERCEPTUAL)}; '' for none)")
    p.add_argument("--distractors", type=int, default=d.distractors_per_photo,
                   help=f"random crops of each photo added to the database (default {d.distractors_per_photo})")
    p.add_argument("--folds", type=int, default=d.folds, help=f"hold-out folds for learned codes (default {d.folds})")
    p.add_argument("--train-crops", type=int, default=d.train_crops,
                   help=f"training crops per photo for learned codes (default {d.train_crops})")
    p.add_argument("--views", type=int, default=d.views, help=f"augmented views per training crop (default {d.views})")
    p.add_argument("--epochs", type=int, default=d.deepbit_epochs, help=f"deepbit epochs (default {d.deepbit_epochs})")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"dedup threshold as a cosine similarity, as `imgfeat dedup` (default {d.threshold}); "
                        "codes use the matching Hamming fraction acos(T) / pi, perceptual hashes 10/64 "
                        "(imagededup's default)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the benchmark and training")
    p.add_argument("--embed-scales", type=lambda text: tuple(float(v) for v in text.split(",") if v.strip()),
                   default=d.scales, help="average vectors at these input-size factors (e.g. 1,0.71; needs "
                                          "--embedder mobilenet-v2-gem)")
    p.add_argument("--embed-flip", action="store_true", help="also average each crop's mirror image's vector")
    p.add_argument("--image-square", action="store_true",
                   help="stretch whole images to the embedder's square (extract --image-square)")
    p.add_argument("--image-gray", action="store_true",
                   help="average whole images' grayscale renditions in (extract --image-gray)")
    p.add_argument("--whiten", type=_ints, default=d.whiten_dims, metavar="DIMS",
                   help="also score PCA-whitened (pcaw-D) and PCA-reduced (pca-D) floats at these sizes, "
                        "fitted per fold on the other photos (e.g. 512,256,128)")
    p.add_argument("--whiten-power", type=float, default=d.whiten_power,
                   help=f"whitening variance exponent (default {d.whiten_power})")
    p.add_argument("--vectors", type=_names, default=d.vectors,
                   help="which vectors to score, comma-separated: object (embedding), image (image_embedding), "
                        "objects (each image's detected objects, as extract --objects K stores them) "
                        f"(default {','.join(d.vectors)}); image/ prefixes the whole image's result keys, "
                        "objects<K>-<max|chamfer>/ the object sets'")
    p.add_argument("--objects", type=int, default=d.objects, metavar="K",
                   help=f"with --vectors ...,objects: up to K objects per image, prefixes 1..K scored "
                        f"(default {d.objects})")
    p.add_argument("--same-object", type=int, default=d.same_object, metavar="N",
                   help="add the same-object task with N objects (default 0: off)")
    p.add_argument("--same-object-pastes", type=int, default=d.same_object_pastes,
                   help=f"backgrounds each object is pasted into (default {d.same_object_pastes})")
    p.add_argument("--json-out", help="also write the full results as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import sys

    from ..eval_report import format_table
    from ..evaluate import EvalSettings, run_neardup

    settings = EvalSettings(
        photos=args.photos, detector="none" if args.no_detect else args.detector, embedder=args.embedder,
        bits=args.bits, methods=args.methods, perceptual=args.perceptual,
        distractors_per_photo=args.distractors, folds=args.folds, train_crops=args.train_crops,
        views=args.views, threshold=args.threshold, seed=args.seed, deepbit_epochs=args.epochs,
        scales=args.embed_scales, flip=args.embed_flip, image_aspect=not args.image_square,
        image_gray=args.image_gray, whiten_dims=args.whiten, whiten_power=args.whiten_power,
        vectors=args.vectors, objects=args.objects, same_object=args.same_object, same_object_pastes=args.same_object_pastes)
    report = run_neardup(settings, log=lambda line: print(line, file=sys.stderr))
    if args.json_out:
        atomic_write(args.json_out, json.dumps(report, indent=2).encode("utf-8"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        print(f"({report['counts']['queries']} queries, {report['counts']['database']} database items, "
              f"{report['seconds']['total']:.0f} s; models {report['models']})")
    return 0
