"""The near-duplicate benchmark's data: photos, distractor crops, transformed queries, and the
encoders that turn them into vectors or codes (the pipeline's Features, imagehash).

    names, photos = load_photos("samples/")
    benchmark = build_benchmark(names, photos)          # database, queries, truth
    embeddings, boxes = PipelineEmbedder(detector, embedder)(benchmark.database)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MissingExtra, SourceError

PERCEPTUAL = ("phash", "dhash", "whash", "ahash")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Benchmark:
    """Database images, query images and which database item each query copies."""

    database: list[np.ndarray]
    database_names: list[str]
    queries: list[np.ndarray]
    query_transforms: list[str]
    query_photo: np.ndarray  # (queries,) index of the photo (= database item) a query came from
    photos: int

    @property
    def relevant(self) -> np.ndarray:
        """(queries, database) bool: the ground truth."""
        truth = np.zeros((len(self.queries), len(self.database)), dtype=bool)
        truth[np.arange(len(self.queries)), self.query_photo] = True
        return truth


def load_photos(folder: str | Path, max_side: int = 1024) -> tuple[list[str], list[np.ndarray]]:
    """Decode every image in `folder` (not recursive) as the pipeline would.

    Raises:
        SourceError: the folder is missing or holds fewer than 2 decodable images.
    """
    from .config import DecodeConfig
    from .decode import decode_image

    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"photo folder not found: {folder}; pass --photos FOLDER with a dozen or more "
                          "photos of your own (the repository's samples/ holds 14)")
    names, images = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        decoded = decode_image(path.read_bytes(), DecodeConfig(max_side=max_side))
        if decoded.error is None:
            names.append(path.name)
            images.append(decoded.image)
    if len(images) < 2:
        raise SourceError(f"{folder} holds {len(images)} decodable images; the benchmark needs at least 2")
    return names, images


def _overlap(window: tuple[int, int, int, int], box: np.ndarray) -> float:
    """Share of `box`'s area inside `window`."""
    left, top = max(window[0], box[0]), max(window[1], box[1])
    right, bottom = min(window[2], box[2]), min(window[3], box[3])
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-9)
    return max(0.0, right - left) * max(0.0, bottom - top) / area


def distractor_windows(width: int, height: int, count: int, rng: np.random.Generator,
                       avoid: np.ndarray | None = None, tries: int = 50) -> list[tuple[int, int, int, int]]:
    """`count` random windows of 35-55% of each side, each chosen (of `tries` candidates) to hold
    as little of the `avoid` box (the photo's main object) as possible, so a distractor is another
    picture rather than a smaller copy of the same object."""
    windows = []
    for _ in range(count):
        best, best_overlap = None, 2.0
        for _ in range(tries if avoid is not None else 1):
            fraction = rng.uniform(0.35, 0.55)
            w, h = max(1, round(width * fraction)), max(1, round(height * fraction))
            left, top = round((width - w) * rng.uniform()), round((height - h) * rng.uniform())
            window = (left, top, left + w, top + h)
            overlap = _overlap(window, avoid) if avoid is not None else 0.0
            if overlap < best_overlap:
                best, best_overlap = window, overlap
            if overlap < 0.2:
                break
        windows.append(best)
    return windows


def build_benchmark(names: list[str], photos: list[np.ndarray], distractors_per_photo: int = 3,
                    seed: int = 0, avoid_boxes: list[np.ndarray] | None = None) -> Benchmark:
    """Database = photos + random 35-55% crops of them; queries = every transform of every photo.

    Args:
        names: the photos' names.
        photos: RGB uint8 arrays.
        distractors_per_photo: random crops of each photo added to the database as distinct items.
        seed: seed of crops and transform parameters.
        avoid_boxes: per photo, the main object's box (x1, y1, x2, y2); distractor crops keep
            away from it (see distractor_windows). None: crops anywhere.
    """
    from PIL import Image

    from .augment import TRANSFORMS, apply, random_view, to_array

    rng = np.random.default_rng(seed)
    database, database_names = list(photos), list(names)
    queries, transforms, sources = [], [], []
    for index, (name, photo) in enumerate(zip(names, photos)):
        image = Image.fromarray(photo)
        avoid = None if avoid_boxes is None else np.asarray(avoid_boxes[index], dtype=np.float64)
        for k, window in enumerate(distractor_windows(image.size[0], image.size[1], distractors_per_photo,
                                                      rng, avoid)):
            database.append(to_array(image.crop(window)))
            database_names.append(f"{name}#crop{k}")
        for transform in TRANSFORMS:
            queries.append(to_array(apply(transform, image, rng)))
            transforms.append(transform)
            sources.append(index)
        queries.append(to_array(random_view(image, rng, max_transforms=3)))
        transforms.append("combined")
        sources.append(index)
    return Benchmark(database, database_names, queries, transforms, np.asarray(sources), len(photos))


# ---------------------------------------------------------------- encoders

class PipelineEmbedder:
    """Images -> (embeddings, boxes) through stages.Features, exactly as `imgfeat extract` runs it."""

    def __init__(self, detector: str, embedder: str, batch_size: int = 16, scales: tuple[float, ...] = (1.0,),
                 flip: bool = False):
        from .config import PipelineConfig
        from .stages import Features

        self.config = PipelineConfig.from_options(detector=detector, embedder=embedder, workers=0,
                                                  progress=False, scales=scales, flip=flip)
        self.features = Features(self.config)
        self.batch_size = batch_size
        self.dim = self.features.dim

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from .stages import ImageBatch

        embeddings, boxes = [], []
        for start in range(0, len(images), self.batch_size):
            table = self.features(ImageBatch.of_images(images[start:start + self.batch_size], "benchmark"))
            embeddings.append(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)))
            boxes.append(np.stack(table.column("box").to_numpy(zero_copy_only=False)))
        return np.concatenate(embeddings).astype(np.float32), np.concatenate(boxes).astype(np.float32)

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embed crops directly (no detection): the training views."""
        return self.features.embed(crops)


def perceptual_hashes(images: list[np.ndarray], method: str, hash_size: int = 8) -> np.ndarray:
    """imagehash's `method` hash of each image as packed bits (n, hash_size**2 / 8).

    Raises:
        MissingExtra: imagehash is not installed.
    """
    try:
        import imagehash
    except ImportError as exc:
        raise MissingExtra("imagehash", purpose="the perceptual-hash baselines of `imgfeat eval`") from exc
    from PIL import Image

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash,
                "ahash": imagehash.average_hash}[method]
    bits = [function(Image.fromarray(image), hash_size=hash_size).hash.ravel() for image in images]
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)
