"""How often the main object changes between a photo and its near-duplicate copies, per rule.

    python benchmarks/main_object.py            # the sample photos, every augment.TRANSFORMS edit

For each photo and each edit (resize, JPEG, crop, flip, rotate, brightness, caption, grayscale),
the detector runs once on the original and once on the copy; each selection rule
(crop.SELECT_MODES) picks the main object in both; a "flip" is a copy whose main object has
another label than the original's or whose object vectors (cosine) fall below 0.8. One run
compares the rules on the same detections. Results: a table on stdout and
benchmarks/results/main_object.json.
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
from imgfeat.crop import SELECT_MODES, crop, expand_box, select_main  # noqa: E402
from imgfeat.stages import Features  # noqa: E402

SAME_OBJECT_COSINE = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
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
    results = {}
    for mode in SELECT_MODES:
        flips, cosines, compared = 0, [], 0
        by_edit: dict[str, list[int]] = {}
        for (a, b, name), da, db in zip(pairs, dets_a, dets_b):
            ia, ib = select_main(da, threshold, mode), select_main(db, threshold, mode)
            if ia is None and ib is None:
                continue
            compared += 1
            if (ia is None) != (ib is None):
                flipped = True
            else:
                crops = [crop(a, expand_box(da[ia], margin, a.shape[1], a.shape[0])),
                         crop(b, expand_box(db[ib], margin, b.shape[1], b.shape[0]))]
                va, vb = features.embed(crops)
                cosine = float(np.dot(va, vb))
                cosines.append(cosine)
                flipped = da[ia, 5] != db[ib, 5] or cosine < SAME_OBJECT_COSINE
            flips += flipped
            by_edit.setdefault(name, []).append(int(flipped))
        results[mode] = {"pairs": compared, "flips": int(flips), "flip_rate": flips / max(compared, 1),
                         "median_object_cosine": float(np.median(cosines)) if cosines else None,
                         "flip_rate_by_edit": {k: float(np.mean(v)) for k, v in sorted(by_edit.items())}}
    edits = sorted(next(iter(results.values()))["flip_rate_by_edit"])
    print("| rule | pairs | flips | flip rate | median object cosine | " + " | ".join(edits) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(edits))
    for mode, r in results.items():
        print(f"| {mode} | {r['pairs']} | {r['flips']} | {r['flip_rate']:.3f} | {r['median_object_cosine']:.3f} | "
              + " | ".join(f"{r['flip_rate_by_edit'][e]:.2f}" for e in edits) + " |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runtime": args.runtime, "photos": args.photos, "results": results}, indent=2))


if __name__ == "__main__":
    main()
