"""How often the main object changes between a photo and its near-duplicate copies, per rule.

    python benchmarks/main_object.py            # the sample photos, every augment.TRANSFORMS edit

For each photo and each edit (resize, JPEG, crop, flip, rotate, brightness, caption, grayscale),
the detector runs once on the original and once on the copy; each selection rule
(crop.SELECT_MODES) picks the main object in both; a "flip" is a copy whose main object has
another label than the original's or whose object vectors (cosine) fall below 0.8. One run
compares the rules on the same detections. Results: a table on stdout and
benchmarks/results/main_object.json.

The set figure (`extract --objects K`): a copy "loses" the original's main object when none of
its K stored objects (its main object first, then the others by score, crop.select_objects) has
the original main object's label with an object cosine >= 0.8; K = 1 is the flip rate. As for
flips, a pair counts only when a detection is found in at least one of the two, and an object
found in only one of them is lost (the other stores the whole image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from imgfeat import augment  # noqa: E402
from imgfeat.config import PipelineConfig  # noqa: E402
from imgfeat.crop import SELECT_MODES, crop, expand_box, select_main, select_objects  # noqa: E402
from imgfeat.stages import Features  # noqa: E402

SAME_OBJECT_COSINE = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects", type=int, default=5, help="the most objects per copy (K) of the set figure")
    parser.add_argument("--output", default=str(HERE / "results" / "main_object.json"))
    args = parser.parse_args()

    features = Features(PipelineConfig.from_options(runtime=args.runtime, workers=0, progress=False))
    threshold, margin = features.config.detect.score_threshold, features.config.detect.margin
    rng = np.random.default_rng(args.seed)
    pairs = []  # (original image, copy image, edit name)
    for path in sorted(Path(args.photos).iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as image:
            original = image.convert("RGB")
            original.thumbnail((1024, 1024))
        for name in augment.TRANSFORMS:
            pairs.append((augment.to_array(original), augment.to_array(augment.apply(name, original, rng)), name))
    originals = [p[0] for p in pairs]
    copies = [p[1] for p in pairs]
    dets_a, dets_b = features.detect(originals), features.detect(copies)
    # per mode and pair: the original's main object and the copy's objects (main first)
    chosen = {mode: [(select_main(da, threshold, mode),
                      select_objects(db, threshold, args.objects, select_main(db, threshold, mode)))
                     for da, db in zip(dets_a, dets_b)] for mode in SELECT_MODES}
    # every crop any mode compares, embedded once: (pair, 0 original / 1 copy, detection)
    wanted = sorted({(n, 0, ia) for pairs_chosen in chosen.values() for n, (ia, kept) in enumerate(pairs_chosen)
                     if ia is not None and kept}
                    | {(n, 1, j) for pairs_chosen in chosen.values() for n, (ia, kept) in enumerate(pairs_chosen)
                       if ia is not None for j in kept})
    crops = []
    for n, side, j in wanted:
        image, dets = (pairs[n][0], dets_a[n]) if side == 0 else (pairs[n][1], dets_b[n])
        crops.append(crop(image, expand_box(dets[j], margin, image.shape[1], image.shape[0])))
    vectors = dict(zip(wanted, features.embed(crops))) if crops else {}
    results = {}
    for mode in SELECT_MODES:
        flips, cosines, compared, one_sided = 0, [], 0, 0
        by_edit: dict[str, list[int]] = {}
        lost = np.zeros(args.objects, np.int64)  # lost[k - 1]: copies whose first k objects miss it
        lost_by_edit: dict[str, list[np.ndarray]] = {}
        for n, ((_, _, name), da, db) in enumerate(zip(pairs, dets_a, dets_b)):
            ia, kept = chosen[mode][n]
            if ia is None and not kept:
                continue
            compared += 1
            if ia is None or not kept:  # an object found in one of the two only: no K brings it back
                flipped, missing = True, np.ones(args.objects, bool)
                one_sided += 1
            else:
                ib = kept[0]
                found = np.asarray([da[ia, 5] == db[j, 5] and float(np.dot(vectors[(n, 0, ia)], vectors[(n, 1, j)]))
                                    >= SAME_OBJECT_COSINE for j in kept])
                cosine = float(np.dot(vectors[(n, 0, ia)], vectors[(n, 1, ib)]))
                cosines.append(cosine)
                flipped = da[ia, 5] != db[ib, 5] or cosine < SAME_OBJECT_COSINE
                # the first k objects hold it when any of them does; a copy with fewer than k
                # objects stores them all
                held = np.logical_or.accumulate(found)
                missing = ~np.r_[held, np.repeat(held[-1], args.objects - len(held))]
            flips += flipped
            lost += missing
            by_edit.setdefault(name, []).append(int(flipped))
            lost_by_edit.setdefault(name, []).append(missing)
        results[mode] = {"pairs": compared, "flips": int(flips), "flip_rate": flips / max(compared, 1),
                         "one_sided": one_sided,
                         "median_object_cosine": float(np.median(cosines)) if cosines else None,
                         "flip_rate_by_edit": {k: float(np.mean(v)) for k, v in sorted(by_edit.items())},
                         "set_lost": {str(k + 1): int(lost[k]) for k in range(args.objects)},
                         "set_lost_rate": {str(k + 1): float(lost[k] / max(compared, 1)) for k in range(args.objects)},
                         "set_lost_rate_by_edit": {e: {str(k + 1): float(np.mean(v, axis=0)[k])
                                                       for k in range(args.objects)}
                                                   for e, v in sorted(lost_by_edit.items())}}
    edits = sorted(next(iter(results.values()))["flip_rate_by_edit"])
    print("| rule | pairs | flips | flip rate | median object cosine | " + " | ".join(edits) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(edits))
    for mode, r in results.items():
        print(f"| {mode} | {r['pairs']} | {r['flips']} | {r['flip_rate']:.3f} | {r['median_object_cosine']:.3f} | "
              + " | ".join(f"{r['flip_rate_by_edit'][e]:.2f}" for e in edits) + " |")
    print(f"\nthe original's main object lost from the copy's first K objects (same label, cosine >= "
          f"{SAME_OBJECT_COSINE}); K = 1 is the flip rate")
    ks = [str(k) for k in range(1, args.objects + 1)]
    print("| rule | one-sided | " + " | ".join(f"lost, K={k}" for k in ks) + " | "
          + " | ".join(f"{e} (K={ks[-1]})" for e in edits) + " |")
    print("|---|---:|" + "---:|" * (len(ks) + len(edits)))
    for mode, r in results.items():
        print(f"| {mode} | {r['one_sided']} | " + " | ".join(f"{r['set_lost_rate'][k]:.3f}" for k in ks) + " | "
              + " | ".join(f"{r['set_lost_rate_by_edit'][e][ks[-1]]:.2f}" for e in edits) + " |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runtime": args.runtime, "photos": args.photos, "objects": args.objects,
                                "results": results}, indent=2))


if __name__ == "__main__":
    main()
