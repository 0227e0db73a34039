"""Fine-tuning throughput: 1 vs 2 data-parallel workers (DDP, gloo) on the same data and seed.

    python benchmarks/finetune_workers.py                       # test-cnn on generated images
    python benchmarks/finetune_workers.py --backbone mobilenet-v2 --photos samples --steps 8 \
        --batch-size 8 --freeze-to features.13

Prints a table (images/s after the first step, seconds, final loss) with the ratio to 1 worker,
reports how far the final losses drift apart, and writes JSON (default benchmarks/results/finetune_workers.json).
Variants are WORKERSxTHREADS (torch threads per worker); loader workers are off so the ratio
measures the training processes only. The ratio is to the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def _generated(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.full((96, 128, 3), rng.integers(0, 255, 3), np.uint8)
        x, y = rng.integers(0, 80), rng.integers(0, 50)
        image[y:y + 40, x:x + 40] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test-cnn")
    parser.add_argument("--photos", help="image folder (default: 64 generated images)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cut-at")
    parser.add_argument("--freeze-to")
    parser.add_argument("--variants", default="1x1,1x2,2x1",
                        help="WORKERSxTHREADS each, comma-separated (default 1x1,1x2,2x1)")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "finetune_workers.json"))
    args = parser.parse_args()

    from imgfeat.tuning.config import FinetuneConfig
    from imgfeat.tuning.data import open_training_data
    from imgfeat.tuning.train import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = args.photos or str(_generated(Path(tmp) / "photos", 64))
        for variant in args.variants.split(","):
            workers, threads = (int(v) for v in variant.split("x"))
            config = FinetuneConfig(source=photos, output=os.path.join(tmp, variant), backbone=args.backbone,
                                    cut_at=args.cut_at, freeze_to=args.freeze_to, steps=args.steps,
                                    batch_size=args.batch_size, workers=workers, threads=threads, loader_workers=0,
                                    holdout=0.0, checkpoint_every=0, progress=False)
            log = train(config, open_training_data(config))
            rows.append({"workers": workers, "threads_each": threads,
                         "images_per_second": log.images_per_second, "seconds": log.seconds,
                         "final_loss": log.losses[-1]})
    base = rows[0]["images_per_second"]
    print(f"backbone {args.backbone}, {args.steps} steps of {args.batch_size} images, {os.cpu_count()} cores")
    print(f"{'workers':>8}{'threads':>9}{'img/s':>9}{'ratio':>7}{'seconds':>9}{'final loss':>12}")
    for row in rows:
        row["ratio"] = round(row["images_per_second"] / base, 2) if base else None
        print(f"{row['workers']:>8}{row['threads_each']:>9}{row['images_per_second']:>9.1f}"
              f"{row['ratio']:>7.2f}{row['seconds']:>9.1f}{row['final_loss']:>12.5f}")
    # the first loss is a forward pass only and must agree; later ones drift apart by
    # floating-point noise that Adam amplifies, more between different thread counts
    for row in rows:
        row["final_loss_relative_difference"] = abs(row["final_loss"] - rows[0]["final_loss"]) / abs(rows[0]["final_loss"])
    print("final loss relative difference to the first variant: "
          + ", ".join(f"{r['workers']}x{r['threads_each']} {r['final_loss_relative_difference']:.1e}" for r in rows))
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps({"backbone": args.backbone, "steps": args.steps,
                                               "batch_size": args.batch_size, "cores": os.cpu_count(),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
