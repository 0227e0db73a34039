"""Learned PCA-whitening of embeddings: fitted on the user's own features, no labels needed.

    whitened = l2_normalize((embedding - mean) @ projection)      projection: (dim_in, dim)

`fit_whitening` takes the top `dim` principal directions of a sample of embeddings and scales
each by its eigenvalue ** -power (power 0.5: full whitening, Jegou & Chum 2012; 0: plain PCA,
only a rotation and a cut). Whitening evens out the few directions every photo shares (bright
sky, "outdoors") that dominate raw CNN cosines, and the cut shrinks the stored vector (1280 ->
256 floats: 5x less storage and index memory).

`imgfeat train-whiten` writes the fit as .npz (arrays "mean", "projection", "eigenvalues" and a
JSON "meta"; read with numpy.load(allow_pickle=False): a file cannot run code); `imgfeat extract
--whiten FILE` applies it to every vector before hashing and names it in the manifest with the
first 8 hex digits of the file's SHA-256, e.g. "pcaw-256-3fa9c2b1".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ModelUnavailable
from .models.preprocess import l2_normalize
from .storage import file_digest
from .storage import atomic_local_path

# Eigenvalues are floored at this fraction of the largest kept one before the power is taken:
# without it a direction of almost no variance in the sample would be blown up to unit weight.
DEFAULT_SHRINKAGE = 1e-3


class Whitening:
    """A fitted whitening: call it on (n, dim_in) vectors to get L2-normalised (n, dim) ones.

    Attributes:
        mean: (dim_in,) float32, subtracted first.
        projection: (dim_in, dim) float32.
        eigenvalues: (dim,) the sample variances along the kept directions (for reports).
        meta: facts about the fit (power, shrinkage, sample size, embedder).
        digest: SHA-256 of the file it was loaded from (None when fitted in memory).
        name: "pcaw-<dim>" (or "pca-<dim>" with power 0), plus "-<8 hex of digest>" when loaded.
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray, eigenvalues: np.ndarray,
                 meta: dict[str, Any] | None = None, digest: str | None = None):
        mean = np.ascontiguousarray(mean, dtype=np.float32)
        projection = np.ascontiguousarray(projection, dtype=np.float32)
        if projection.ndim != 2 or mean.shape != (projection.shape[0],):
            raise ConfigError(f"whitening needs mean (dim_in,) and projection (dim_in, dim), got "
                              f"{mean.shape} and {projection.shape}")
        self.mean, self.projection = mean, projection
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float32)
        self.dim_in, self.dim = int(projection.shape[0]), int(projection.shape[1])
        self.meta = meta or {}
        self.digest = digest
        kind = "pca" if float(self.meta.get("power", 0.5)) == 0.0 else "pcaw"
        self.name = f"{kind}-{self.dim}" + (f"-{digest[:8]}" if digest else "")

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim_in:
            raise ConfigError(f"this whitening takes {self.dim_in}-d vectors, got shape {vectors.shape}")
        if not len(vectors):
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize((vectors - self.mean) @ self.projection)


def fit_whitening(vectors: np.ndarray, dim: int, power: float = 0.5, shrinkage: float = DEFAULT_SHRINKAGE,
                  meta: dict[str, Any] | None = None) -> Whitening:
    """PCA-whitening of `vectors` down to `dim` dimensions.

    Args:
        vectors: (n, dim_in) embeddings, e.g. a dataset's; n must exceed `dim`.
        dim: dimensions kept (<= dim_in).
        power: each direction is scaled by its variance ** -power (0.5 whitens, 0 is plain PCA).
        shrinkage: variances are floored at this fraction of the largest one.
        meta: extra facts stored with the fit.

    Raises:
        ConfigError: bad sizes or parameters, or too few vectors for `dim`.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ConfigError(f"vectors must be (n, dim), got shape {vectors.shape}")
    n, dim_in = vectors.shape
    if not 0 < dim <= dim_in:
        raise ConfigError(f"--dim must be in 1..{dim_in} (the embedding size), got {dim}")
    if n <= dim:
        raise ConfigError(f"fitting a {dim}-d whitening needs more than {dim} vectors (ideally 10x more), "
                          f"got {n}: use more features or a smaller --dim")
    if not 0.0 <= power <= 1.0 or not 0.0 <= shrinkage < 1.0:
        raise ConfigError(f"power must be in [0, 1] and shrinkage in [0, 1), got {power} and {shrinkage}")
    if not np.isfinite(vectors).all():
        raise ConfigError("vectors hold NaN or infinite values")
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    covariance = centred.T @ centred / n
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:dim]
    kept, directions = np.maximum(eigenvalues[order], 0.0), eigenvectors[:, order]
    # a deterministic sign per direction (eigh's is arbitrary): the largest component positive
    signs = np.sign(directions[np.abs(directions).argmax(axis=0), np.arange(dim)])
    directions *= np.where(signs == 0, 1.0, signs)
    floor = max(kept[0] * shrinkage, 1e-12)
    projection = directions * np.maximum(kept, floor) ** -power
    facts = {"dim_in": int(dim_in), "dim": int(dim), "power": float(power), "shrinkage": float(shrinkage),
             "fitted_on": int(n),
             "variance_kept": float(kept.sum() / max(np.maximum(eigenvalues, 0.0).sum(), 1e-12)),
             **(meta or {})}
    return Whitening(mean, projection, kept, facts)


def save_whitening(path: str | os.PathLike, whitening: Whitening) -> Path:
    """Write `whitening` to `path` (.npz) atomically: a kill or a full disk leaves the previous
    file intact, never a truncated one.

    Raises:
        ConfigError: the suffix is not .npz.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"a whitening file must end with .npz, got {path.name!r}")
    with atomic_local_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mean=whitening.mean, projection=whitening.projection, eigenvalues=whitening.eigenvalues,
                 meta=np.array(json.dumps(whitening.meta, sort_keys=True)))
    return path


def load_whitening(path: str | os.PathLike, dim_in: int | None = None) -> Whitening:
    """Read a whitening file written by `save_whitening` (no pickles).

    Args:
        path: the .npz file.
        dim_in: the embedder's dimension, checked against the file's.

    Raises:
        ModelUnavailable: no such file.
        ConfigError: not a whitening file, or made for another embedding size.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"whitening file not found: {path} (write one with `imgfeat train-whiten`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            mean, projection, eigenvalues = data["mean"], data["projection"], data["eigenvalues"]
            meta = json.loads(str(data["meta"]))
    except (KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a whitening file from `imgfeat train-whiten`: {exc}") from exc
    whitening = Whitening(mean, projection, eigenvalues, meta, digest=file_digest(path))
    if dim_in is not None and whitening.dim_in != dim_in:
        raise ConfigError(f"{path} whitens {whitening.dim_in}-d embeddings but the embedder makes {dim_in}-d "
                          f"ones (it was fitted on {meta.get('embedder', 'another embedder')}'s)")
    return whitening


def train_whiten(features: str | os.PathLike, output: str | os.PathLike, dim: int = 256,
                 vector: str = "image", power: float = 0.5, shrinkage: float = DEFAULT_SHRINKAGE) -> Whitening:
    """Fit a whitening on a feature dataset's vectors and save it: `imgfeat train-whiten`.

    Args:
        features: a folder written by `imgfeat extract` (without --whiten).
        output: the .npz to write.
        dim: dimensions kept.
        vector: "image" (whole-image vectors, where stored; else the object ones) or "object".
        power, shrinkage: see fit_whitening.

    Returns:
        The saved whitening, loaded back (so its name carries the file's digest).

    Raises:
        SourceError: no ok rows. ConfigError: mixed embedders, already whitened features, bad sizes.
    """
    from .dataset import embedding_matrix, open_features
    from .errors import SourceError

    if vector not in ("image", "object"):
        raise ConfigError(f"vector must be 'image' or 'object', got {vector!r}")
    dataset = open_features(features)
    names = dataset.schema.names
    column = "image_embedding" if vector == "image" and "image_embedding" in names else "embedding"
    table = dataset.read([column, "embedder"], status="ok")
    if table.num_rows == 0:
        raise SourceError(f"{features} has no rows with status ok to fit a whitening on")
    embedders = set(table.column("embedder").to_pylist())
    if len(embedders) != 1:
        raise ConfigError(f"{features} mixes embedders {sorted(map(str, embedders))}; fit one whitening per embedder")
    embedder = embedders.pop()
    if "+pca" in str(embedder):
        raise ConfigError(f"{features} is already whitened ({embedder}); fit on features extracted without --whiten")
    vectors = embedding_matrix(table.column(column), dataset.dim)
    fitted = fit_whitening(vectors, dim, power, shrinkage, meta={"embedder": embedder, "vector": column})
    save_whitening(output, fitted)
    return load_whitening(output)
