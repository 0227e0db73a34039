"""`imgfeat finetune`: adapt the embedder to your images; export it for `extract --embedder onnx:`."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
Self-supervised (default): two augmented views of each image (the near-duplicate edits of
`imgfeat eval neardup`: resize, JPEG, crop, flip, rotate, brightness, caption, grayscale) are
pulled together and the rest of the batch pushed apart (InfoNCE). Supervised: a label column
of a CSV or Parquet source, with a classifier head (softmax) or ArcFace.

OUTPUT gets checkpoints/last.pt (rerun the same command to resume after a kill),
embedder.onnx (preprocessing recorded inside), evaluation.json (held-out near-duplicate
scores before/after) and model_card.json / MODEL_CARD.md.

examples:
  imgfeat finetune photos/ -o tuned/ --steps 300 --cut-at features.14 --freeze-to features.10
  imgfeat finetune products.csv -o tuned/ --mode supervised --label-column product_id --loss arcface
  imgfeat finetune photos/ -o tuned/ --workers 2          # data-parallel, 2 processes
  imgfeat finetune photos/ -o tuned/ --workers 2 --engine spark   # through TorchDistributor
  imgfeat extract photos/ -o features/ --embedder onnx:tuned/embedder.onnx
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..tuning.config import BACKBONE_NAMES, ENGINES, MODES, SUPERVISED_LOSSES, FinetuneConfig

    d = FinetuneConfig(source="", output="")
    p = sub.add_parser("finetune", help="fine-tune the embedder on your images (self-supervised or labelled)",
                       description="Fine-tune a pretrained backbone on your images and export an ONNX embedder.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="images: folder, glob, list (.txt/.csv), Parquet, or fsspec URL")
    p.add_argument("-o", "--output", required=True, help="folder for checkpoints, embedder.onnx, model card")
    p.add_argument("--mode", choices=MODES, default=d.mode, help=f"training objective (default {d.mode})")
    p.add_argument("--backbone", choices=BACKBONE_NAMES, default=d.backbone,
                   help=f"pretrained network (default {d.backbone})")
    p.add_argument("--cut-at", help="last backbone layer kept, e.g. features.14 (default: all)")
    p.add_argument("--freeze-to", help="last backbone layer left frozen, e.g. features.10 (default: none)")
    p.add_argument("--detector", help="train on this detector's main-object crops, e.g. centernet-mbv3 "
                                      "(default: whole images)")
    p.add_argument("--head-dim", type=int, default=d.head_dim,
                   help=f"embedding size of the linear head (default {d.head_dim}; 0 = no head)")
    p.add_argument("--loss", choices=SUPERVISED_LOSSES, default=d.loss,
                   help=f"supervised objective (default {d.loss})")
    p.add_argument("--label-column", help="column holding the class or product id (supervised)")
    p.add_argument("--id-column", help="id column of a table source (joins the labels)")
    p.add_argument("--path-column", help="path column of a table source")
    p.add_argument("--content-column", help="binary image column of a Parquet source")
    p.add_argument("--include", help="file-name patterns to keep, e.g. '*.jpg,*.png'")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps in all (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"global batch, split over the workers (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"InfoNCE temperature / 1 over the ArcFace scale (default {d.temperature})")
    p.add_argument("--input-size", type=int, help="model input side in pixels (default: the backbone's)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="data-parallel training processes (DistributedDataParallel; default 1)")
    p.add_argument("--engine", choices=ENGINES, default=d.engine,
                   help="local: torch.multiprocessing here; spark: pyspark's TorchDistributor; ray: Ray Train "
                        "(default local)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads per training process (default 0: cores / workers)")
    p.add_argument("--loader-workers", type=int, default=d.loader_workers,
                   help=f"decode/augment processes per training process (default {d.loader_workers})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"steps between checkpoints (default {d.checkpoint_every}; 0 = only at the end)")
    p.add_argument("--holdout", type=float, default=d.holdout,
                   help=f"share of images kept for the before/after evaluation (default {d.holdout})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of split, order, views, head (default 0)")
    p.add_argument("--json-out", help="also write the model card JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from ..tuning.run import finetune

    card = finetune(
        args.source, args.output, mode=args.mode, backbone=args.backbone, cut_at=args.cut_at,
        freeze_to=args.freeze_to, detector=args.detector, head_dim=args.head_dim, loss=args.loss,
        label_column=args.label_column,
        id_column=args.id_column, path_column=args.path_column, content_column=args.content_column,
        include=args.include, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, input_size=args.input_size, workers=args.workers, engine=args.engine, threads=args.threads,
        loader_workers=args.loader_workers, checkpoint_every=args.checkpoint_every, holdout=args.holdout,
        seed=args.seed, progress=not args.no_progress, log=print)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(card, fh, indent=1, default=str)
    sys.stdout.flush()
    return 0
