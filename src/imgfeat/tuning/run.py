"""`finetune()`: list the images, train (or resume), score before/after, export, write the card.

    report = finetune("photos/", "tuned/", steps=200, cut_at="features.14", freeze_to="features.10")
    imgfeat extract photos/ -o features/ --embedder onnx:tuned/embedder.onnx

The output folder holds:
    checkpoints/last.pt   weights + optimiser state + step (resume by rerunning the same call)
    train_log.json        losses per step, images/s, workers
    embedder.onnx         the embedder, its preprocessing recorded inside
    evaluation.json       scores before/after on the held-out images
    model_card.json, MODEL_CARD.md   data, settings, steps, scores, the files' digests
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

from ..errors import MissingExtra
from ..storage import atomic_write
from .config import FinetuneConfig

EMBEDDER_FILE = "embedder.onnx"
EVALUATION_FILE = "evaluation.json"


def finetune(source: str | os.PathLike, output: str | os.PathLike, *, config: FinetuneConfig | None = None,
             log: Callable[[str], None] = lambda message: None, **options: Any) -> dict[str, Any]:
    """Fine-tune an embedder on the images of `source` and export it to `output`/embedder.onnx.

    Args:
        source: folder, glob, list, Parquet table or fsspec URL of images (labels in a CSV or
            Parquet column for `mode="supervised"`).
        output: the folder to write; rerunning the same call resumes from its checkpoint.
        config: a full FinetuneConfig (its source/output are replaced by the arguments); or
            give its fields as keyword options: mode, backbone, cut_at, freeze_to, head_dim,
            loss, label_column, steps, batch_size, lr, workers, loader_workers, holdout, seed...
        log: receives one line per stage.

    Returns:
        The model card as a dict (data, settings, training, evaluation before/after, files).

    Raises:
        ConfigError, SourceError, ModelUnavailable, MissingExtra.
    """
    from dataclasses import replace

    try:
        import onnx  # noqa: F401  (the export)
        import torch
    except ImportError as exc:
        raise MissingExtra(exc.name or "torch", extra="finetune", purpose="fine-tuning") from exc
    from ..storage import file_digest
    from .data import open_training_data, read_images
    from .evaluation import before_after, torch_encoder
    from .export import export_embedder
    from .model import FinetuneNet, input_spec
    from .train import checkpoint_path, load_trained, train

    if config is None:
        config = FinetuneConfig(source=os.fspath(source), output=os.fspath(output), **options)
    else:
        config = replace(config, source=os.fspath(source), output=os.fspath(output), **options)
    data = open_training_data(config)
    log(f"data: {len(data.train)} training images, {len(data.heldout)} held out"
        + (f", {len(data.classes)} labels" if data.labels is not None else ""))
    training = train(config, data)
    log(f"trained {training.steps} steps (resumed from {training.resumed_from}) on {training.workers} "
        f"worker(s): {training.images_per_second} images/s, final loss "
        f"{training.losses[-1] if training.losses else float('nan'):.4f}")

    if config.threads:  # the evaluation below runs here, in this process (see config.threads)
        torch.set_num_threads(config.threads)
    spec = input_spec(config.backbone, config.input_size)
    tuned = load_trained(config)
    torch.manual_seed(config.seed)
    pretrained = FinetuneNet(config.backbone, config.cut_at, config.freeze_to, config.head_dim).eval()
    names_items, images = read_images(data.reader, data.heldout, config.max_side)
    labels = [data.labels[i.id] for i in names_items] if data.labels is not None else None
    evaluation = before_after(torch_encoder(pretrained.pooled, spec), torch_encoder(tuned, spec),
                              [i.uri for i in names_items], images, labels, config.seed)
    out = Path(config.output)
    atomic_write(str(out / EVALUATION_FILE), json.dumps(evaluation, indent=1).encode())
    if "change" in evaluation:
        log("held-out scores (before -> after): " + ", ".join(
            f"{bench} {metric} {evaluation['before'][bench][metric]:.3f} -> {evaluation['after'][bench][metric]:.3f}"
            for bench in evaluation["after"] for metric in ("top1", "map")
            if evaluation["after"][bench].get(metric) is not None))

    embedder = export_embedder(tuned, spec, out / EMBEDDER_FILE, about={
        "imgfeat.finetune": json.dumps({"backbone": config.backbone, "cut_at": config.cut_at,
                                        "head_dim": config.head_dim, "mode": config.mode,
                                        "steps": training.steps})})
    log(f"embedder: {embedder}  (imgfeat extract SOURCE -o OUT --embedder onnx:{embedder})")
    card = {
        "model": {"backbone": config.backbone, "cut_at": config.cut_at, "freeze_to": config.freeze_to,
                  "embedding_dim": tuned.dim, "preprocess": json.loads(_spec_json(spec))},
        "data": data.description,
        "settings": config.to_dict(),
        "training": {"steps": training.steps, "resumed_from": training.resumed_from,
                     "first_loss": training.losses[0] if training.losses else None,
                     "final_loss": training.losses[-1] if training.losses else None,
                     "images_per_second": training.images_per_second, "workers": training.workers,
                     "unreadable_replaced": training.unreadable, "seconds": training.seconds},
        "evaluation": evaluation,
        "files": {"embedder": EMBEDDER_FILE, "embedder_sha256_16": file_digest(embedder),
                  "checkpoint": str(checkpoint_path(config.output).relative_to(out))},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    atomic_write(str(out / "model_card.json"), json.dumps(card, indent=1, default=str).encode())
    atomic_write(str(out / "MODEL_CARD.md"), model_card_markdown(card).encode())
    return card


def _spec_json(spec: Any) -> str:
    from ..models.onnx_meta import spec_to_json

    return spec_to_json(spec)


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as a short Markdown page."""
    model, training, evaluation = card["model"], card["training"], card["evaluation"]
    lines = [
        "# Fine-tuned imgfeat embedder", "",
        f"- backbone: {model['backbone']}, cut at {model['cut_at'] or 'the last layer'}, frozen up to "
        f"{model['freeze_to'] or 'nothing'}; embedding {model['embedding_dim']}-d",
        f"- preprocessing: {model['preprocess']}",
        f"- data: {card['data'].get('kind')} {card['data'].get('train')} training images, "
        f"{card['data'].get('heldout')} held out",
        f"- training: {card['settings']['mode']}, {training['steps']} steps of {card['settings']['batch_size']} "
        f"images, loss {training['first_loss']} -> {training['final_loss']}, "
        f"{training['images_per_second']} images/s on {training['workers']} worker(s)", "",
        "## Held-out scores", "",
    ]
    if "change" not in evaluation:
        lines.append(f"not measured: {evaluation.get('skipped', 'no held-out images')}")
    else:
        lines += ["| benchmark | metric | before | after |", "|---|---|---|---|"]
        for bench, scores in evaluation["after"].items():
            for metric in ("top1", "map"):
                if scores.get(metric) is not None:
                    lines.append(f"| {bench} | {metric} | {evaluation['before'][bench][metric]:.3f} | "
                                 f"{scores[metric]:.3f} |")
        lines += ["", "before: the pretrained backbone (cut, pooled, no head); after: the exported embedder."]
    lines += ["", f"Use it: `imgfeat extract SOURCE -o OUT --embedder onnx:{card['files']['embedder']}`", ""]
    return "\n".join(lines)
