"""The near-duplicate benchmark's data: photos, distractor crops, transformed queries, and the
encoders that turn them into vectors or codes (the pipeline's Features, imagehash).

    names, photos = load_photos("samples/")
    extras, variants = load_variants("samples/", names)  # natural variants, if a variants/ folder exists
    benchmark = build_benchmark(names, photos, extras=extras, variants=variants)  # database, queries, truth
    embeddings, boxes = PipelineEmbedder(detector, embedder)(benchmark.database)
    encoded = PipelineEmbedder(detector, embedder).encode(photos)  # both vectors, boxes, scores
    encoded = PipelineEmbedder(detector, embedder, objects=5).encode(photos)  # and up to 5 objects each
    task = build_same_object(names, photos, encoded.boxes, encoded.scores)  # objects pasted elsewhere

Natural variants live in PHOTOS/variants/: `STEM@LABEL.ext` is another rendition of the picture
`STEM` (another aspect ratio, crop or encoding made by its author or another project), a query
whose only relevant item is STEM, found among the photos or in variants/ itself; a file without
"@" there is an extra database original that is not one of the photos (no edits of it are made).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MissingExtra, SourceError
from .object_sets import ObjectSets

PERCEPTUAL = ("phash", "dhash", "whash", "ahash")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VARIANTS_FOLDER = "variants"
VARIANT_TRANSFORM = "variant"


@dataclass
class Benchmark:
    """Database images, query images and which database item each query copies."""

    database: list[np.ndarray]
    database_names: list[str]
    queries: list[np.ndarray]
    query_transforms: list[str]
    query_photo: np.ndarray  # (queries,) index of the database item a query came from (a photo or an extra)
    photos: int
    extras: int = 0  # extra originals (variants/ files without "@"), the database's last items

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
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"photo folder not found: {folder}; pass --photos FOLDER with a dozen or more "
                          "photos of your own (the repository's samples/ holds 14)")
    names, images = _decode_folder(folder, max_side)
    if len(images) < 2:
        raise SourceError(f"{folder} holds {len(images)} decodable images; the benchmark needs at least 2")
    return names, images


def _decode_folder(folder: Path, max_side: int) -> tuple[list[str], list[np.ndarray]]:
    """The decodable images directly in `folder`, sorted by name, as the pipeline decodes them."""
    from .config import DecodeConfig
    from .decode import decode_image

    names, images = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        decoded = decode_image(path.read_bytes(), DecodeConfig(max_side=max_side))
        if decoded.error is None:
            names.append(path.name)
            images.append(decoded.image)
    return names, images


def load_variants(folder: str | Path, photo_names: list[str], max_side: int = 1024
                  ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str, np.ndarray]]]:
    """The natural variants in `folder`/variants/, if that folder exists (see the module doc).

    Args:
        folder: the photo folder.
        photo_names: the photos' file names (load_photos), which variants may refer to by stem.
        max_side: decode size limit, as load_photos.

    Returns:
        extras: (name, image) of each extra database original (a file without "@").
        variants: (truth name, label, image) of each variant query; the truth is a photo's or an
            extra's file name.

    Raises:
        SourceError: a variant names a picture (STEM) that is neither a photo nor an extra.
    """
    folder = Path(folder) / VARIANTS_FOLDER
    if not folder.is_dir():
        return [], []
    names, images = _decode_folder(folder, max_side)
    extras = [(n, im) for n, im in zip(names, images) if "@" not in Path(n).stem]
    by_stem = {Path(n).stem: n for n in photo_names}
    by_stem.update({Path(n).stem: n for n, _ in extras})
    variants = []
    for name, image in zip(names, images):
        stem = Path(name).stem
        if "@" not in stem:
            continue
        target, label = stem.split("@", 1)
        if target not in by_stem:
            raise SourceError(f"variant {folder / name} names the picture {target!r}, which is neither a photo "
                              f"in {folder.parent} nor an extra original in {folder} (expected {target}.jpg)")
        variants.append((by_stem[target], label, image))
    return extras, variants


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
                    seed: int = 0, avoid_boxes: list[np.ndarray] | None = None,
                    extras: list[tuple[str, np.ndarray]] = (),
                    variants: list[tuple[str, str, np.ndarray]] = ()) -> Benchmark:
    """Database = photos + random 35-55% crops of them + extra originals; queries = every
    transform of every photo, then the natural variants (transform "variant").

    Args:
        names: the photos' names.
        photos: RGB uint8 arrays.
        distractors_per_photo: random crops of each photo added to the database as distinct items.
        seed: seed of crops and transform parameters.
        avoid_boxes: per photo, the main object's box (x1, y1, x2, y2); distractor crops keep
            away from it (see distractor_windows). None: crops anywhere.
        extras, variants: as load_variants returns them.

    Raises:
        SourceError: a variant's truth is not among the photos or extras.
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
    for name, image in extras:  # after the crops, so the photos keep indices 0..n-1
        database.append(image)
        database_names.append(f"{VARIANTS_FOLDER}/{name}")
    position = {n: i for i, n in enumerate(names)}
    position.update({n: len(database) - len(extras) + i for i, (n, _) in enumerate(extras)})
    for truth, _label, image in variants:
        if truth not in position:
            raise SourceError(f"variant of {truth!r}: no such photo or extra original")
        queries.append(image)
        transforms.append(VARIANT_TRANSFORM)
        sources.append(position[truth])
    return Benchmark(database, database_names, queries, transforms, np.asarray(sources, dtype=np.int64),
                     len(photos), len(extras))


# ---------------------------------------------------------------- the same-object task

@dataclass
class SameObject:
    """Pastes of a few photos' main objects into other photos (the backgrounds).

    Each paste is a query; its relevant items are the other pastes of the same object (into other
    backgrounds, at other sizes and places). The pastes of other objects into the same backgrounds
    are the distractors: they share most of their pixels with a query, but not its object.
    """

    images: list[np.ndarray]
    object_of: np.ndarray  # (pastes,) which object (index into sources)
    background_of: np.ndarray  # (pastes,) index of the photo used as background
    sources: list[str]  # name of each object's photo
    backgrounds: list[str]  # names of the photos used as backgrounds

    @property
    def relevant(self) -> np.ndarray:
        """(pastes, pastes) bool: same object, not the same paste."""
        same = self.object_of[:, None] == self.object_of[None, :]
        np.fill_diagonal(same, False)
        return same


def paste_object(background: np.ndarray, obj: np.ndarray, size: float, x: float, y: float) -> np.ndarray:
    """`obj` resized so its long side is `size` x the background's short side (shrunk further to
    fit), pasted with its top-left corner at fractions (x, y) of the room left for it."""
    from PIL import Image

    height, width = background.shape[:2]
    oh, ow = obj.shape[:2]
    scale = min(size * min(width, height) / max(ow, oh), width / ow, height / oh)
    pw, ph = max(8, round(ow * scale)), max(8, round(oh * scale))
    pasted = Image.fromarray(obj).resize((pw, ph), Image.Resampling.LANCZOS)
    out = Image.fromarray(background).convert("RGB")
    out.paste(pasted.convert("RGB"), (round((width - pw) * x), round((height - ph) * y)))
    return np.asarray(out)


def build_same_object(names: list[str], photos: list[np.ndarray], boxes: np.ndarray, scores: np.ndarray,
                      objects: int = 12, pastes_per_object: int = 4, seed: int = 0,
                      area: tuple[float, float] = (0.03, 0.6)) -> SameObject:
    """The same-object task: the main objects of the `objects` photos with the most confident
    detections (boxes covering `area` of their photo: an object, not the whole frame), each cut
    out (its detector box) and pasted into `pastes_per_object` other photos at 35-60% of their
    short side, at random places. Backgrounds are drawn from the photos where the detector found
    nothing (scenery), or from every photo that is not a source when those are too few.

    Args:
        names, photos: the photos.
        boxes, scores: per photo, the main object's box (x1, y1, x2, y2) and score (NaN: none found),
            as PipelineEmbedder.encode returns them.
        objects: how many objects to paste.
        pastes_per_object: backgrounds per object (>= 2: a query needs another paste to find).
        seed: seed of the choice of backgrounds, sizes and places.
        area: smallest and largest share of its photo an object's box may cover.

    Raises:
        ConfigError: fewer than 2 usable objects, or too few backgrounds.
    """
    from .errors import ConfigError

    if pastes_per_object < 2:
        raise ConfigError("the same-object task needs at least 2 pastes of each object")
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores, dtype=np.float64)
    candidates = []
    for i, (photo, box, score) in enumerate(zip(photos, boxes, scores)):
        share = (box[2] - box[0]) * (box[3] - box[1]) / (photo.shape[0] * photo.shape[1])
        if np.isfinite(score) and area[0] <= share <= area[1]:
            candidates.append(i)
    sources = sorted(candidates, key=lambda i: -scores[i])[:objects]
    if len(sources) < 2:
        raise ConfigError(f"the same-object task found {len(sources)} photos with a main object covering "
                          f"{area[0]:.0%}-{area[1]:.0%} of the frame; it needs at least 2")
    pool = [i for i in range(len(photos)) if not np.isfinite(scores[i]) and i not in sources]
    if len(pool) < pastes_per_object:
        pool = [i for i in range(len(photos)) if i not in sources]
    if len(pool) < pastes_per_object:
        raise ConfigError(f"the same-object task needs {pastes_per_object} background photos, found {len(pool)}")
    images, object_of, background_of = [], [], []
    for k, source in enumerate(sources):
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[source])
        obj = photos[source][max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        for background in rng.choice(pool, pastes_per_object, replace=False):
            images.append(paste_object(photos[background], obj, rng.uniform(0.35, 0.6), rng.uniform(), rng.uniform()))
            object_of.append(k)
            background_of.append(int(background))
    used = sorted(set(background_of))
    return SameObject(images, np.asarray(object_of), np.asarray(background_of), [names[i] for i in sources],
                      [names[i] for i in used])


# ---------------------------------------------------------------- encoders

@dataclass
class Encoded:
    """What the pipeline stores for each image, as the benchmark uses it."""

    object: np.ndarray  # (n, dim) main object's vector (`embedding`)
    image: np.ndarray  # (n, dim) whole image's vector (`image_embedding`)
    boxes: np.ndarray  # (n, 4) main object's box; the whole image where none was found
    scores: np.ndarray  # (n,) its detection score; NaN where none was found or detection is off
    objects: ObjectSets | None = None  # up to K objects per image (`objects`), with objects=K

    def vectors(self, kind: str) -> np.ndarray:
        """The "object" or the "image" vectors."""
        return self.object if kind == "object" else self.image


class PipelineEmbedder:
    """Images -> (embeddings, boxes) through stages.Features, exactly as `imgfeat extract` runs it."""

    def __init__(self, detector: str, embedder: str, batch_size: int = 16, scales: tuple[float, ...] = (1.0,),
                 flip: bool = False, objects: int = 0, image_aspect: bool = True, image_gray: bool = False):
        from .config import PipelineConfig
        from .stages import Features

        self.config = PipelineConfig.from_options(detector=detector, embedder=embedder, workers=0,
                                                  progress=False, scales=scales, flip=flip, objects=objects,
                                                  image_aspect=image_aspect, image_gray=image_gray)
        self.features = Features(self.config)
        self.batch_size = batch_size
        self.dim = self.features.dim

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(object vectors, boxes) of the images."""
        encoded = self.encode(images)
        return encoded.object, encoded.boxes

    def encode(self, images: list[np.ndarray]) -> Encoded:
        """Both vectors, the boxes and the detection scores of the images, from one pipeline pass."""
        from .stages import ImageBatch

        names = ["embedding", "box", "score"] + (["image_embedding"] if self.config.embed.whole_image else [])
        columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
        object_parts: list[tuple[np.ndarray, np.ndarray, list[str | None]]] = []
        for start in range(0, len(images), self.batch_size):
            table = self.features(ImageBatch.of_images(images[start:start + self.batch_size], "benchmark"))
            for name, parts in columns.items():
                values = table.column(name).to_numpy(zero_copy_only=False)
                parts.append(np.stack(values) if values.dtype == object else values)
            if self.config.detect.objects:
                object_parts.append(_object_entries(table, self.dim))
        object_vectors = np.concatenate(columns["embedding"]).astype(np.float32)
        # the whole-image vector is the object vector where the crop was the whole image; a config
        # without whole-image vectors stores none
        image_vectors = (np.concatenate(columns["image_embedding"]).astype(np.float32)
                         if self.config.embed.whole_image else object_vectors)
        objects = None
        if object_parts:
            objects = ObjectSets(np.concatenate([p[0] for p in object_parts]).astype(np.float32),
                                 np.concatenate([p[1] for p in object_parts]),
                                 [label for p in object_parts for label in p[2]])
        return Encoded(object_vectors, image_vectors, np.concatenate(columns["box"]).astype(np.float32),
                       np.concatenate(columns["score"]).astype(np.float32), objects)

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embed crops directly (no detection): the training views."""
        return self.features.embed(crops)


def _object_entries(table, dim: int) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """A feature table's `objects` column, flattened: (vectors (m, dim), counts (rows,), labels (m,))."""
    column = table.column("objects").combine_chunks()
    entries = column.flatten()
    vectors = entries.field("embedding").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return vectors, column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64), \
        entries.field("label").to_pylist()


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
