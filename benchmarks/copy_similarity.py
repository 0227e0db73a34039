"""Whole-image vs main-object vectors on copies: each sample photo and a half-size JPEG-40 copy.

    python benchmarks/copy_similarity.py        # extracts samples/ + copies into a temp folder

Prints, per vector and per way of embedding the whole image (stretched, aspect kept: the
default, aspect kept + grayscale rendition), the lowest cosine of a copy to its original, the
highest cosine between distinct photos (copies included) and which two they are, and how many
copies a threshold catches, and the same for the 256-bit codes in Hamming distance; writes benchmarks/results/copy_similarity.json. The rule of thumb for a dedup threshold: between the
two, with room on both sides.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import imgfeat  # noqa: E402


# how the whole image is embedded (the main object's vector is the same in all three)
VARIANTS = {"stretched": {"image_aspect": False}, "aspect kept (default)": {},
            "aspect kept + gray": {"image_gray": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(HERE.parent / "samples"))
    parser.add_argument("--thresholds", default="0.85,0.86,0.87,0.9")
    parser.add_argument("--output", default=str(HERE / "results" / "copy_similarity.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for path in sorted(Path(args.photos).iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            shutil.copy(path, photos / path.name)
            with Image.open(path) as image:
                image.convert("RGB").resize((image.width // 2, image.height // 2)).save(
                    photos / f"{path.stem}_copy.jpg", quality=40)
        frames = {}
        for variant, options in VARIANTS.items():
            imgfeat.extract(photos, Path(tmp) / variant, progress=False, **options)
            frames[variant] = imgfeat.read_features(Path(tmp) / variant).to_pandas(status="ok")
    results = {}
    for variant, frame in frames.items():
        stems = frame["path"].map(lambda p: Path(p).stem.removesuffix("_copy")).to_numpy()
        names = frame["path"].map(lambda p: Path(p).name).to_numpy()
        copy = frame["path"].str.endswith("_copy.jpg").to_numpy()
        for name, column in (("whole image", "image_embedding"), ("main object", "embedding")):
            vectors = np.stack(frame[column]).astype(np.float32)
            sims = vectors @ vectors.T
            same = (stems[:, None] == stems[None, :]) & copy[:, None] & ~copy[None, :]
            distinct = stems[:, None] != stems[None, :]
            pair = sims[same]
            worst = np.unravel_index(np.argmax(np.where(distinct, sims, -2.0)), sims.shape)
            codes = np.unpackbits(np.stack(frame[column.replace("embedding", "code")].map(
                lambda c: np.frombuffer(c, np.uint8))), axis=1).astype(np.int16)
            hamming = (codes[:, None, :] != codes[None, :, :]).sum(axis=2)
            results[f"{name}, {variant}"] = {
                "code_bits": int(codes.shape[1]), "code_copies_max": int(hamming[same].max()),
                "code_distinct_min": int(hamming[distinct].min()),
                "copies_min": float(pair.min()), "distinct_max": float(sims[distinct].max()),
                "distinct_max_pair": [str(names[worst[0]]), str(names[worst[1]])], "copies": int(len(pair)),
                "caught": {t: int((pair >= float(t)).sum()) for t in args.thresholds.split(",")}}
    print("| vector | copy vs original, min | distinct, max (which) | " +
          " | ".join(f"caught at {t}" for t in args.thresholds.split(",")) +
          " | code: copies differ by at most | distinct by at least |")
    print("|---|---:|---|" + "---:|" * len(args.thresholds.split(",")) + "---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['copies_min']:.3f} | {r['distinct_max']:.3f} ({' / '.join(r['distinct_max_pair'])}) | "
              + " | ".join(f"{c}/{r['copies']}" for c in r["caught"].values())
              + f" | {r['code_copies_max']} of {r['code_bits']} | {r['code_distinct_min']} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
