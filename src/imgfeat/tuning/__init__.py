"""Fine-tuning: adapt the embedder to your own images, then use it in the same pipeline.

    config.py      FinetuneConfig: every setting of a run, checked once
    data.py        any imgfeat source -> augmented views -> batches (loader workers, prefetch)
    model.py       pretrained backbone cut at a named layer, frozen up to one, a linear head
    losses.py      InfoNCE (self-supervised); softmax classifier or ArcFace (labels)
    train.py       the loop: one process or N DistributedDataParallel ones; checkpoints, resume
    evaluation.py  near-duplicate (and label retrieval) scores before/after on held-out images
    export.py      ONNX embedder with its preprocessing recorded inside
    run.py         finetune(): all of the above, and the model card

Only `run.finetune` is imported here; the rest import torch and load on first use.
"""

from .run import finetune

__all__ = ["finetune"]
