"""Embedders from torchvision or timm by name, for machines that have those packages and weights.

Weights come from the packages' own download caches; offline, the error says where to put
the file. The classifier head is removed so the pooled features are the embedding.
"""

from __future__ import annotations

import numpy as np

from ..errors import MissingExtra, ModelUnavailable
from .preprocess import InputSpec, l2_normalize, to_tensor


class TorchHubEmbedder:
    def __init__(self, name: str, device: str = "cpu", threads: int = 0):
        family, model_name = name.split(":", 1)
        try:
            import torch
        except ImportError as exc:
            raise MissingExtra("torch", extra="torch", purpose=name) from exc
        try:
            if family == "torchvision":
                import torchvision
                model = torchvision.models.get_model(model_name, weights="DEFAULT")
            else:
                import timm
                model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except ImportError as exc:
            raise MissingExtra(family, purpose=name) from exc
        except (OSError, RuntimeError, ValueError) as exc:  # offline download, unknown name
            raise ModelUnavailable(
                f"could not load {name}: {exc}. Offline, put the weights file in "
                f"{torch.hub.get_dir()}/checkpoints/ (torchvision) or the Hugging Face cache (timm), "
                "or export the model to ONNX and use 'onnx:PATH'.") from exc
        if family == "torchvision":
            for head in ("fc", "classifier", "heads", "head"):
                if hasattr(model, head):
                    setattr(model, head, torch.nn.Identity())
                    break
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.model = model.eval().to(device)
        self.name = name
        self.digest = name
        self.spec = InputSpec(size=(224, 224))
        with torch.inference_mode():
            self.dim = int(self.model(torch.zeros(1, 3, 224, 224, device=device)).reshape(1, -1).shape[1])

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.torch.from_numpy(to_tensor(crops, self.spec)).to(self.device)
        with self.torch.inference_mode():
            features = self.model(batch).reshape(len(crops), -1).float().cpu().numpy()
        return l2_normalize(features)
