"""Train binary codes from a feature dataset, without labels: DeepBit, ITQ, random projection.

Every method yields a linear hash `sign(embedding @ weight + bias)` saved by
`models.learned_hash.save_hasher` (.onnx or .npz); inference never needs torch.

    rproj    the seeded random orthogonal projection (the untrained baseline; hashing.py)
    itq      Gong & Lazebnik (CVPR 2011): centre, PCA to `bits` dimensions, then alternate
             B = sign(V R) and the orthogonal Procrustes rotation R; numpy. Needs bits <= dim.
    deepbit  Lin et al. (CVPR 2016) objectives on a linear layer, trained with torch:
               quantisation   mean (|h| - 1)^2         outputs near +-1 (h = tanh of the projection)
               balance        mean_k (mean_n h_nk)^2   each bit on for half the images
               invariance     mean ||h(x) - h(view)||^2 / bits   a transformed crop keeps its code
             plus a small decorrelation term ||h'h/n - I||^2 / bits^2 (DeepBit gets distinct bits
             from its pre-trained network; a linear layer on a fixed embedding needs the push).
             Starts from the ITQ solution when bits <= dim, else from the random projection.

Views for the invariance term come from `view_embeddings`: re-read each image at `path`,
crop its `box`, apply `augment.random_view`, embed with the dataset's embedder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import DecodeConfig, DetectConfig
from .errors import ConfigError, MissingExtra, SourceError
from .models.hashing import orthogonal_projection
from .models.learned_hash import LinearHasher, save_hasher

METHODS = ("deepbit", "itq", "rproj")
DEFAULT_METHOD = "itq"  # the best learned code in docs/quality.md (imgfeat eval neardup)


@dataclass
class FeatureSet:
    """The ok rows of a feature dataset: what hash training reads."""

    ids: list[str]
    paths: list[str]
    boxes: np.ndarray  # (n, 4) float32, full-resolution pixels
    embeddings: np.ndarray  # (n, dim) float32
    embedder: str
    hasher: str | None = None


@dataclass
class DeepBitSettings:
    """Weights and schedule of the DeepBit objectives (see the module docstring)."""

    epochs: int = 200
    learning_rate: float = 1e-3
    batch_size: int = 256
    quantization: float = 0.1
    balance: float = 1.0
    invariance: float = 1.0
    decorrelation: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Read the ok rows (id, path, box, embedding, embedder) of a dataset from `imgfeat extract`
    (a folder, local or remote, or any Parquet with the output schema: `dataset.open_features`).

    Raises:
        SourceError: no feature Parquet at `path`, or no ok rows.
        ConfigError: rows from more than one embedder.
    """
    from .dataset import embedding_matrix, open_features

    dataset = open_features(path)
    columns = [c for c in ("id", "path", "box", "embedding", "embedder", "hasher") if c in dataset.schema.names]
    table = dataset.read(columns, status="ok")
    if table.num_rows == 0:
        raise SourceError(f"{path} has no rows with status ok to train on")
    embedders = set(table.column("embedder").to_pylist())
    if len(embedders) != 1:
        raise ConfigError(f"{path} mixes embedders {sorted(map(str, embedders))}; train one hash per embedder")
    embeddings = embedding_matrix(table.column("embedding"), dataset.dim)
    boxes = np.stack(table.column("box").to_numpy(zero_copy_only=False)).astype(np.float32)
    hashers = set(table.column("hasher").to_pylist()) if "hasher" in table.column_names else set()
    return FeatureSet(ids=table.column("id").to_pylist(), paths=table.column("path").to_pylist(),
                      boxes=boxes, embeddings=embeddings, embedder=embedders.pop(),
                      hasher=hashers.pop() if len(hashers) == 1 else None)


def box_views(image: np.ndarray, box: np.ndarray, views: int, rng: np.random.Generator,
              margin: float = DetectConfig().margin) -> list[np.ndarray]:
    """`views` random augmentations (augment.random_view) of the crop of `box` in `image`.

    Args:
        image: H x W x 3 uint8.
        box: x1, y1, x2, y2 in `image`'s pixels.
        views: how many.
        rng: source of randomness.
        margin: crop margin around the box, as in extraction.

    Returns:
        The views as RGB uint8 arrays.
    """
    from PIL import Image

    from .augment import random_view, to_array
    from .crop import crop, expand_box

    window = expand_box(np.asarray(box, dtype=np.float32), margin, image.shape[1], image.shape[0])
    original = Image.fromarray(crop(image, window))
    return [to_array(random_view(original, rng)) for _ in range(views)]


def view_embeddings(features: FeatureSet, embed: Callable[[list[np.ndarray]], np.ndarray], views: int,
                    seed: int = 0, margin: float = DetectConfig().margin,
                    decode: DecodeConfig = DecodeConfig(max_side=512),
                    on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `views` augmented copies of each row's crop.

    Args:
        features: rows with readable `path`s and their `box`es.
        embed: crops (RGB uint8 arrays) -> L2-normalised embeddings, the dataset's embedder.
        views: copies per row.
        seed: seed of the augmentations.
        margin: crop margin around the box, as in extraction.
        decode: how to decode the images (max_side keeps re-reading cheap).
        on_progress: called with the number of rows done after each row.

    Returns:
        (n, views, dim) float32 view embeddings and an (n,) bool mask of the rows whose image
        could be read again (rows that could not have zeros).
    """
    from .decode import decode_image
    from .sources import FileSource

    n, dim = features.embeddings.shape
    out = np.zeros((n, views, dim), dtype=np.float32)
    readable = np.zeros(n, dtype=bool)
    if views <= 0:
        return out, readable
    rng = np.random.default_rng(seed)
    source = FileSource(features.paths, {"kind": "views"})
    by_uri = {item.uri: item for item in source.list()}
    for i, (uri, box) in enumerate(zip(features.paths, features.boxes)):
        result = source.read([by_uri[uri]], decode.max_bytes)[0]
        decoded = decode_image(result.content, decode) if result.error is None else None
        if decoded is not None and decoded.error is None:
            sx, sy = decoded.scale
            small_box = np.asarray(box, dtype=np.float32) / np.asarray([sx, sy, sx, sy], np.float32)
            out[i] = embed(box_views(decoded.image, small_box, views, rng, margin))
            readable[i] = True
        if on_progress is not None:
            on_progress(i + 1)
    return out, readable


def train_rproj(dim: int, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The random projection as (weight, bias): hashing.RandomProjectionHasher's planes."""
    return orthogonal_projection(dim, bits, seed), np.zeros(bits, np.float32)


def train_itq(embeddings: np.ndarray, bits: int, iterations: int = 50, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Iterative quantisation (Gong & Lazebnik): PCA to `bits`, then a rotation that minimises
    the quantisation error ||sign(V R) - V R||.

    Args:
        embeddings: (n, dim) training vectors; n >= bits.
        bits: code length, <= dim.
        iterations: alternations of B = sign(V R) and the Procrustes update of R.
        seed: seed of the initial random rotation.

    Returns:
        weight (dim, bits) and bias (bits,) with sign(x @ weight + bias) the code.

    Raises:
        ConfigError: bits > dim or fewer training vectors than bits.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n, dim = x.shape
    if bits > dim:
        raise ConfigError(f"ITQ projects by PCA, so bits ({bits}) must be <= the embedding size ({dim}); "
                          "use --method deepbit or rproj for longer codes")
    if n < bits:
        raise ConfigError(f"ITQ needs at least as many training vectors as bits ({n} < {bits}); "
                          "extract more images or add --views")
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / n)
    pca = eigenvectors[:, np.argsort(eigenvalues)[::-1][:bits]]
    projected = centred @ pca
    rotation = orthogonal_projection(bits, bits, seed).astype(np.float64)
    for _ in range(iterations):
        codes = np.sign(projected @ rotation)
        codes[codes == 0] = 1
        u, _, vt = np.linalg.svd(projected.T @ codes)
        rotation = u @ vt
    weight = pca @ rotation
    return weight.astype(np.float32), (-mean @ weight).astype(np.float32)


def train_deepbit(embeddings: np.ndarray, views: np.ndarray | None, bits: int, seed: int = 0,
                  settings: DeepBitSettings = DeepBitSettings()) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Train a linear hash with the DeepBit objectives (torch, CPU).

    Args:
        embeddings: (n, dim) vectors of the originals.
        views: (n, v, dim) vectors of augmented views of each original, or None (then no
            invariance term).
        bits: code length (may exceed dim).
        seed: seed of the initialisation and the batch order.
        settings: loss weights and schedule.

    Returns:
        weight (dim, bits), bias (bits,), and the final value of each loss term.

    Raises:
        MissingExtra: torch is not installed (training only; codes are computed without it).
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingExtra("torch", extra="torch", purpose="training a DeepBit hash "
                           "(or use --method itq, which needs only numpy)") from exc
    x = np.asarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    if views is not None and views.shape[1] == 0:
        views = None
    train = x if views is None else np.concatenate([x, views.reshape(-1, dim)])
    if bits <= dim and len(train) >= bits:
        weight0, bias0 = train_itq(train, bits, seed=seed)
    else:
        weight0 = orthogonal_projection(dim, bits, seed)
        bias0 = -train.mean(axis=0) @ weight0
    # scale so the projections have unit spread: tanh then neither saturates nor stays linear
    spread = float((train @ weight0 + bias0).std()) or 1.0
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.from_numpy(weight0 / spread))
    bias = torch.nn.Parameter(torch.from_numpy((bias0 / spread).astype(np.float32)))
    optimiser = torch.optim.Adam([weight, bias], lr=settings.learning_rate)
    originals = torch.from_numpy(x)
    view_tensor = None if views is None else torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
    generator = torch.Generator().manual_seed(seed)
    identity = torch.eye(bits)
    terms: dict[str, float] = {}

    def codes(v: "torch.Tensor") -> "torch.Tensor":
        return torch.tanh(v @ weight + bias)

    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            index = order[start:start + settings.batch_size]
            h = codes(originals[index])
            batch_terms = {
                "quantization": ((h.abs() - 1) ** 2).mean(),
                "balance": (h.mean(dim=0) ** 2).mean(),
                "decorrelation": ((h.T @ h / len(index) - identity) ** 2).sum() / bits ** 2,
            }
            if view_tensor is not None:
                hv = codes(view_tensor[index])  # (b, v, bits)
                batch_terms["invariance"] = ((hv - h[:, None, :]) ** 2).sum(dim=2).mean() / bits
                batch_terms["quantization"] = (batch_terms["quantization"] + ((hv.abs() - 1) ** 2).mean()) / 2
            loss = sum(getattr(settings, name) * value for name, value in batch_terms.items())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            terms = {name: float(value.detach()) for name, value in batch_terms.items()}
    return weight.detach().numpy().copy(), bias.detach().numpy().copy(), terms


def fit_hasher(method: str, embeddings: np.ndarray, views: np.ndarray | None, bits: int, seed: int = 0,
               settings: DeepBitSettings = DeepBitSettings()) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train `method` ("deepbit", "itq" or "rproj") and return (weight, bias, facts for the file).

    ITQ trains on the originals and their views together (more vectors for the PCA).

    Raises:
        ConfigError: an unknown method or bits that the method cannot give.
    """
    if bits <= 0 or bits % 8:
        raise ConfigError(f"bits must be a positive multiple of 8, got {bits}")
    x = np.asarray(embeddings, dtype=np.float32)
    facts: dict[str, Any] = {"trained_on": int(len(x)), "views": 0 if views is None else int(views.shape[1])}
    if method == "rproj":
        weight, bias = train_rproj(x.shape[1], bits, seed)
    elif method == "itq":
        train = x if views is None or views.shape[1] == 0 else np.concatenate([x, views.reshape(-1, x.shape[1])])
        weight, bias = train_itq(train, bits, seed=seed)
    elif method == "deepbit":
        weight, bias, terms = train_deepbit(x, views, bits, seed, settings)
        facts["final_losses"] = {k: round(v, 5) for k, v in terms.items()}
        facts["epochs"] = settings.epochs
    else:
        raise ConfigError(f"unknown hash method {method!r}; valid: {', '.join(METHODS)}")
    facts["seed"] = seed
    return weight, bias, facts


def train_hash(features: str | os.PathLike, output: str | os.PathLike, bits: int = 256,
               method: str = DEFAULT_METHOD, views: int = 4, seed: int = 0,
               settings: DeepBitSettings = DeepBitSettings(),
               on_progress: Callable[[int, int], None] | None = None) -> LinearHasher:
    """Train a hash on a feature dataset and write it to `output` (.onnx or .npz).

    Args:
        features: the folder written by `imgfeat extract`.
        output: the hash file; its suffix picks the format.
        bits: code length (64, 128, 256, ... a multiple of 8).
        method: "deepbit", "itq" or "rproj".
        views: augmented views per image (deepbit's invariance; more vectors for itq); 0 for none.
        seed: seed of views, initialisation and training.
        settings: DeepBit loss weights and schedule.
        on_progress: callback(rows_done, rows) while views are embedded.

    Returns:
        The trained hasher, loaded back from `output` (its name carries the file digest).

    Raises:
        SourceError, ConfigError, MissingExtra (see the functions it calls).
    """
    from .models import create_embedder
    from .models.learned_hash import load_hasher

    if method not in METHODS:
        raise ConfigError(f"unknown hash method {method!r}; valid: {', '.join(METHODS)}")
    if os.path.splitext(os.fspath(output))[1] not in (".onnx", ".npz"):
        raise ConfigError(f"the hash file must end with .onnx or .npz, got {output}")
    feature_set = read_features(features)
    view_vectors = None
    used = 0
    if views > 0 and method != "rproj":
        embedder = create_embedder(feature_set.embedder)
        progress = (lambda done: on_progress(done, len(feature_set.ids))) if on_progress else None
        view_vectors, readable = view_embeddings(feature_set, embedder, views, seed, on_progress=progress)
        used = int(readable.sum())
        if used == 0:
            raise SourceError("no image of the dataset could be read again for augmented views "
                              "(paths moved, or a table source); use --views 0")
        feature_set.embeddings = feature_set.embeddings[readable]
        view_vectors = view_vectors[readable]
    weight, bias, facts = fit_hasher(method, feature_set.embeddings, view_vectors, bits, seed, settings)
    facts.update(embedder=feature_set.embedder, features=os.fspath(features), rows_with_views=used)
    save_hasher(output, weight, bias, method, facts)
    return load_hasher(output, weight.shape[0])
