"""The near-duplicate benchmark behind `imgfeat eval neardup`.

    database  the photos, plus distractors: random crops of 35-55% of each side of every photo,
              placed to hold as little of the photo's main object as possible (distinct
              "originals" that share colours and texture with a photo but are not a copy of it)
    queries   each photo through every transform of augment.TRANSFORMS (resize, jpeg, crop,
              flip, rotate, brightness, text, grayscale) and one chain of 2-3 of them
              and, from PHOTOS/variants/, natural variants (other renditions of a picture; see
              neardup_data) and extra originals
    truth     a query's only relevant database item is the photo it came from

Each method ranks the whole database for every query:
    float         1 - cosine of the pipeline's embeddings (stages.Features: detect -> crop -> embed)
    rproj/itq/deepbit-<bits>   Hamming distance / bits of the codes of those embeddings
    phash/dhash/whash/ahash    Hamming distance / 64 of imagehash's 64-bit hashes of the images
With `vectors=("object", "image")` every float and code method runs on both of the pipeline's
vectors from the same pass: the main object's (`embedding`; keys as above) and the whole image's
(`image_embedding`; keys "image/float", "image/rproj-256", ...). "objects" scores the sets of up
to `objects` K objects per image (`extract --objects K`; object_sets): every prefix K' = 1..K of
the lists, each image compared with each item through every pair of their objects, "max" (the
closest pair) and "chamfer" (the query's objects' mean closest match); keys "objects3-max/float",
"objects3-chamfer/float", "objects3-max/rproj-256" (codes: the closest pair's Hamming distance).

The same-object task (`same_object` > 0; neardup_data.build_same_object): the main objects of a
few photos pasted into other photos; a paste's relevant items are the other pastes of its object,
the pastes of other objects into the same backgrounds are the distractors. Both vectors are scored,
and the object sets when asked for.

Learned codes are trained in folds so no query is coded by a hash that saw its photo: the
photos are split in `folds` groups; for each, a hash is trained on random crops of the other
photos and their augmented views (hashtrain.box_views) and codes that group's queries (and the
whole database). Ties in distance are broken at random (seeded), so long runs of equal
Hamming distances neither help nor hurt a method on average.

Metrics (metric functions are pure and reusable; the targets and the table: eval_report):
    top-1      share of queries whose nearest database item is their photo
    mAP        mean average precision (one relevant item: mean of 1 / its rank)
    precision/recall   over all (query, database) pairs within the dedup threshold
    best F1    the best F1 over all thresholds, and that threshold (thresholds differ by method)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ConfigError
from .eval_report import CODE_METHODS, check_larger_targets, check_targets
from .metrics import (
    best_f1, cosine_distances, hamming_distances, mean_average_precision, precision_recall, rank_order,
)
from .neardup_data import (
    PERCEPTUAL, Benchmark, PipelineEmbedder, SameObject, build_benchmark, build_same_object, load_photos, load_variants,
    perceptual_hashes,
)
from .object_sets import REDUCTIONS, object_set_distances, objects_per_image, set_results

VECTORS = ("object", "image", "objects")
SINGLE = ("object", "image")  # one vector per image (the rest of the benchmark: codes, whitening, learned hashes)
# result-key prefix of each vector: the object vector keeps the unprefixed keys it always had
PREFIX = {"object": "", "image": "image/"}
# imagededup's default for 64-bit perceptual hashes: max_distance_threshold=10
PERCEPTUAL_THRESHOLD = 10 / 64


# ---------------------------------------------------------------- the run

@dataclass
class EvalSettings:
    """What `imgfeat eval neardup` runs.

    Args:
        photos: folder of real photos (the originals).
        detector: detector name, or "none" for whole images.
        embedder: embedder name.
        bits: code lengths to evaluate.
        methods: binary-code methods (rproj, itq, deepbit).
        perceptual: imagehash methods.
        distractors_per_photo: random crops of each photo added to the database.
        folds: photo groups for the learned codes (each group coded by a hash trained without it).
        train_crops: random crops per training photo used as training originals.
        views: augmented views per training original.
        threshold: the dedup threshold as a cosine similarity, as `imgfeat dedup --threshold`
            (0.9 here, as the object vectors' benchmark was first measured; `imgfeat dedup`
            defaults to 0.85 on whole-image vectors); floats call pairs with cosine >= it duplicates.
        seed: seed of everything random.
        scales, flip: embedder views averaged per crop (EmbedConfig.scales / flip).
        image_aspect, image_gray: how whole images are embedded (EmbedConfig.image_aspect /
            image_gray).
        whiten_dims: also score the float vectors PCA-whitened to each of these sizes, the
            whitening fitted per fold on the other photos' training crops and views (like the
            learned codes), as "pcaw-<dim>"; and plain PCA to that size as "pca-<dim>".
        whiten_power: the whitening's variance exponent (whitening.fit_whitening).
        vectors: which of the pipeline's vectors to score, side by side from the same pass:
            "object" (`embedding`), "image" (`image_embedding`), "objects" (the `objects` sets;
            floats and rproj codes only).
        objects: with "objects": the most objects per image (`extract --objects K`); every
            prefix 1..K is scored.
        same_object: objects in the same-object task (0: no task); each pasted into
            `same_object_pastes` backgrounds.
    """

    photos: str = "samples"
    detector: str = "centernet-mbv3"
    embedder: str = "mobilenet-v2"
    bits: tuple[int, ...] = (64, 128, 256)
    methods: tuple[str, ...] = CODE_METHODS
    perceptual: tuple[str, ...] = PERCEPTUAL
    distractors_per_photo: int = 3
    folds: int = 2
    train_crops: int = 24
    views: int = 4
    threshold: float = 0.9
    seed: int = 0
    deepbit_epochs: int = 200
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    image_aspect: bool = True
    image_gray: bool = False
    whiten_dims: tuple[int, ...] = ()
    whiten_power: float = 0.5
    vectors: tuple[str, ...] = ("object",)
    objects: int = 3
    same_object: int = 0
    same_object_pastes: int = 4

    def __post_init__(self) -> None:
        if not self.vectors or set(self.vectors) - set(VECTORS):
            raise ConfigError(f"vectors must be some of {', '.join(VECTORS)}, got {list(self.vectors)}")
        if "objects" in self.vectors and (self.objects < 1 or self.detector == "none"):
            raise ConfigError(f"the objects vector needs a detector and objects >= 1 (got {self.objects}, "
                              f"detector {self.detector!r}): drop --no-detect, or 'objects' from --vectors")
        if self.same_object < 0 or (self.same_object and self.same_object_pastes < 2):
            raise ConfigError("same_object must be >= 0 objects with >= 2 pastes each")
        unknown = set(self.methods) - set(CODE_METHODS)
        if unknown:
            raise ConfigError(f"unknown code methods {sorted(unknown)}; valid: {', '.join(CODE_METHODS)}")
        unknown = set(self.perceptual) - set(PERCEPTUAL)
        if unknown:
            raise ConfigError(f"unknown perceptual hashes {sorted(unknown)}; valid: {', '.join(PERCEPTUAL)}")
        if any(b <= 0 or b % 8 for b in self.bits):
            raise ConfigError(f"bits must be positive multiples of 8, got {list(self.bits)}")
        if self.folds < 2:
            raise ConfigError("folds must be >= 2 so every photo is held out of one hash's training")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold is a cosine similarity in (0, 1], got {self.threshold}")

    @property
    def code_threshold(self) -> float:
        """The Hamming fraction matching the float threshold: for sign codes of random planes the
        expected fraction of differing bits is angle / pi."""
        return math.acos(self.threshold) / math.pi


def _score(distances: np.ndarray, benchmark: Benchmark, threshold: float, seed: int,
           misses: bool = False) -> dict[str, Any]:
    """A method's scores; with `misses`, also each query whose nearest item is wrong: its
    photo, its edit and the item it found (for the floats: which photos are hard, and why)."""
    relevant = benchmark.relevant
    order = rank_order(distances, seed)
    first = np.take_along_axis(relevant, order[:, :1], axis=1)[:, 0]
    transforms = np.asarray(benchmark.query_transforms)
    scores = {
        "top1": float(first.mean()),
        "map": mean_average_precision(distances, relevant, seed),
        "threshold": threshold,
        **{f"at_threshold_{k}": v for k, v in precision_recall(distances, relevant, threshold).items()},
        "best_f1": best_f1(distances, relevant),
        "top1_by_transform": {t: float(first[transforms == t].mean()) for t in dict.fromkeys(transforms)},
    }
    if misses:
        names = benchmark.database_names
        scores["misses"] = [{"photo": names[benchmark.query_photo[q]], "edit": transforms[q],
                             "found": names[order[q, 0]]} for q in np.flatnonzero(~first)]
    return scores


def _training_set(photos: list[np.ndarray], encoder: PipelineEmbedder, crops_per_photo: int, views: int,
                  rng: np.random.Generator, vectors: tuple[str, ...] = ("object",)
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training originals (each photo and random 40-100% crops of it) embedded through the
    pipeline, and `views` augmented views of each one: of its main-object crop for the object
    vector, of the whole image for the whole-image vector. Per vector: (originals, views)."""
    from PIL import Image

    from .augment import crop_fraction, to_array
    from .hashtrain import box_views

    originals = []
    for photo in photos:
        image = Image.fromarray(photo)
        originals.append(photo)
        for _ in range(crops_per_photo - 1):
            originals.append(to_array(crop_fraction(image, rng.uniform(0.4, 1.0), rng.uniform(), rng.uniform())))
    encoded = encoder.encode(originals)
    out = {}
    for kind in vectors:
        view_vectors = np.zeros((len(originals), views, encoder.dim), np.float32)
        if views:
            chunk = 16  # originals whose views are embedded together: fewer, fuller batches
            for start in range(0, len(originals), chunk):
                crops = []
                for i in range(start, min(start + chunk, len(originals))):
                    image = originals[i]
                    box = encoded.boxes[i] if kind == "object" else \
                        np.asarray([0, 0, image.shape[1], image.shape[0]], np.float32)
                    crops.extend(box_views(image, box, views, rng))
                view_vectors[start:start + chunk] = encoder.embed_crops(crops).reshape(-1, views, encoder.dim)
        out[kind] = (encoded.vectors(kind), view_vectors)
    return out


def _whitened_distances(settings: EvalSettings, train_vectors: np.ndarray, train_views: np.ndarray,
                        queries: np.ndarray, database: np.ndarray, query_rows: np.ndarray, query_count: int,
                        distances_by_key: dict[str, np.ndarray], skipped: dict[str, str], prefix: str = "") -> None:
    """One fold's cosine distances after PCA-whitening / PCA fitted on that fold's training
    vectors (the originals and their views: no query photo among them)."""
    from .whitening import fit_whitening

    sample = np.concatenate([train_vectors, train_views.reshape(-1, train_vectors.shape[1])])
    for dim in settings.whiten_dims:
        for kind, power in (("pcaw", settings.whiten_power), ("pca", 0.0)):
            key = f"{prefix}{kind}-{dim}"
            try:
                whitening = fit_whitening(sample, dim, power)
            except ConfigError as exc:  # e.g. too few training vectors for dim: report, run the rest
                skipped[key] = str(exc)
                continue
            distances_by_key.setdefault(key, np.zeros((query_count, len(database)), np.float32))[query_rows] = \
                cosine_distances(whitening(queries), whitening(database))


def run_neardup(settings: EvalSettings, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Build the benchmark, encode it with every method, and score them side by side.

    Args:
        settings: what to run.
        log: receives progress lines.

    Returns:
        A JSON-ready dict: settings, counts, seconds, and per method its scores
        (top1, map, precision/recall at the threshold, best F1, top-1 by transform), the
        same-object task's scores when asked for, and the issue's targets with whether each is met.

    Raises:
        SourceError, ConfigError, MissingExtra.
    """
    from .config import DetectConfig
    from .hashtrain import DeepBitSettings, fit_hasher
    from .models.hashing import RandomProjectionHasher
    from .models.learned_hash import LinearHasher

    started = time.perf_counter()
    names, photos = load_photos(settings.photos)
    extras, variants = load_variants(settings.photos, names)
    if settings.folds > len(photos):
        raise ConfigError(f"folds ({settings.folds}) must not exceed the number of photos ({len(photos)})")
    object_count = settings.objects if "objects" in settings.vectors else 0
    encoder = PipelineEmbedder(settings.detector, settings.embedder, scales=settings.scales, flip=settings.flip,
                               objects=object_count, image_aspect=settings.image_aspect,
                               image_gray=settings.image_gray)
    single = [v for v in settings.vectors if v in SINGLE]
    # distractors avoid each photo's main object, found by the eval's detector (the default one
    # when detection is off, so both variants get the same benchmark; only its boxes are used,
    # so the tiny test embedder spares an embedding pass)
    locator = encoder if settings.detector != "none" else PipelineEmbedder(DetectConfig().model, "test-tiny")
    located = locator.encode(photos)
    benchmark = build_benchmark(names, photos, settings.distractors_per_photo, settings.seed, list(located.boxes),
                                extras=extras, variants=variants)
    log(f"benchmark: {len(photos)} photos, {len(benchmark.database)} database items "
        f"({len(extras)} extra originals), {len(benchmark.queries)} queries ({len(variants)} natural variants)")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    database_encoded = encoder.encode(benchmark.database)
    query_encoded = encoder.encode(benchmark.queries)
    seconds["embed_benchmark"] = time.perf_counter() - t
    results: dict[str, dict[str, Any]] = {}
    code_threshold = settings.code_threshold
    for vector in single:
        prefix = PREFIX[vector]
        query_vectors, database_vectors = query_encoded.vectors(vector), database_encoded.vectors(vector)
        results[f"{prefix}float"] = {"bits": 32 * encoder.dim, **_score(
            cosine_distances(query_vectors, database_vectors), benchmark, 1.0 - settings.threshold, settings.seed,
            misses=True)}
    object_counts = None
    if object_count:
        rproj_bits = settings.bits if "rproj" in settings.methods else ()
        results.update(set_results(
            query_encoded.objects, database_encoded.objects, object_count, rproj_bits, settings.seed,
            lambda distances, bits, is_code: {"bits": bits, **_score(
                distances, benchmark, code_threshold if is_code else 1.0 - settings.threshold, settings.seed,
                misses=not is_code)}))
        object_counts = {"queries": objects_per_image(query_encoded.objects, object_count),
                         "database": objects_per_image(database_encoded.objects, object_count)}

    t = time.perf_counter()
    for method in settings.perceptual:
        distances = hamming_distances(perceptual_hashes(benchmark.queries, method),
                                      perceptual_hashes(benchmark.database, method))
        results[method] = {"bits": 64, **_score(distances, benchmark, PERCEPTUAL_THRESHOLD, settings.seed)}
    seconds["perceptual_hashes"] = time.perf_counter() - t

    if "rproj" in settings.methods:
        for vector in single:
            query_vectors, database_vectors = query_encoded.vectors(vector), database_encoded.vectors(vector)
            for bits in settings.bits:
                hasher = RandomProjectionHasher(encoder.dim, bits, settings.seed)
                distances = hamming_distances(hasher(query_vectors), hasher(database_vectors))
                results[f"{PREFIX[vector]}rproj-{bits}"] = {
                    "bits": bits, **_score(distances, benchmark, code_threshold, settings.seed)}

    learned = [m for m in settings.methods if m != "rproj"]
    skipped: dict[str, str] = {}
    if "objects" in settings.vectors:  # said, not silently left out
        for name in learned + [f"pcaw-{d}" for d in settings.whiten_dims]:
            skipped[f"objects/{name}"] = ("the object sets are scored with floats and random-projection codes only; "
                                          "learned codes and whitening are trained per single vector")
    if (learned or settings.whiten_dims) and single:
        rng = np.random.default_rng(settings.seed + 1)
        fold_of_photo = rng.permutation(len(photos)) % settings.folds
        # the fold of every database item a query may point at: photos as drawn, extra originals
        # in turn (crops are never a query's truth)
        fold_of_item = np.full(len(benchmark.database), -1)
        fold_of_item[:len(photos)] = fold_of_photo
        if benchmark.extras:
            fold_of_item[-benchmark.extras:] = np.arange(benchmark.extras) % settings.folds
        distances_by_key: dict[str, np.ndarray] = {}
        for fold in range(settings.folds):
            train_photos = [p for p, f in zip(photos, fold_of_photo) if f != fold]
            t = time.perf_counter()
            training = _training_set(train_photos, encoder, settings.train_crops, settings.views, rng, single)
            seconds["embed_training"] = seconds.get("embed_training", 0.0) + time.perf_counter() - t
            log(f"fold {fold + 1}/{settings.folds}: training on {len(train_photos)} photos, "
                f"{len(training[single[0]][0])} crops x {settings.views} views")
            query_rows = np.flatnonzero(fold_of_item[benchmark.query_photo] == fold)
            for vector in single:
                prefix = PREFIX[vector]
                train_vectors, train_views = training[vector]
                query_vectors, database_vectors = query_encoded.vectors(vector), database_encoded.vectors(vector)
                _whitened_distances(settings, train_vectors, train_views, query_vectors[query_rows],
                                    database_vectors, query_rows, len(benchmark.queries), distances_by_key,
                                    skipped, prefix)
                t = time.perf_counter()
                for method in learned:
                    for bits in settings.bits:
                        key = f"{prefix}{method}-{bits}"
                        try:
                            weight, bias, _ = fit_hasher(method, train_vectors, train_views, bits, settings.seed,
                                                         DeepBitSettings(epochs=settings.deepbit_epochs))
                        except ConfigError as exc:  # e.g. ITQ with bits > dim: report, run the rest
                            skipped[key] = str(exc)
                            continue
                        hasher = LinearHasher(weight, bias, method)
                        fold_distances = hamming_distances(hasher(query_vectors[query_rows]),
                                                           hasher(database_vectors))
                        distances_by_key.setdefault(key, np.zeros((len(benchmark.queries), len(benchmark.database)),
                                                                  np.float32))[query_rows] = fold_distances
                seconds["train_hashes"] = seconds.get("train_hashes", 0.0) + time.perf_counter() - t
        for key, distances in distances_by_key.items():
            if key in skipped:
                continue
            if key.split("/")[-1].startswith("pca"):  # floats: cosine distances, 32 bits a value
                results[key] = {"bits": 32 * int(key.rsplit("-", 1)[1]),
                                **_score(distances, benchmark, 1.0 - settings.threshold, settings.seed)}
            else:
                results[key] = {"bits": int(key.rsplit("-", 1)[1]),
                                **_score(distances, benchmark, code_threshold, settings.seed)}

    same_object = None
    if settings.same_object:
        t = time.perf_counter()
        task = build_same_object(names, photos, located.boxes, located.scores, settings.same_object,
                                 settings.same_object_pastes, settings.seed)
        same_object = run_same_object(task, encoder, settings)
        seconds["same_object"] = time.perf_counter() - t
        log(f"same-object task: {len(task.sources)} objects x {settings.same_object_pastes} pastes "
            f"into {len(task.backgrounds)} backgrounds")
    seconds["total"] = time.perf_counter() - started
    transforms = list(dict.fromkeys(benchmark.query_transforms))
    report = {
        "benchmark": "neardup",
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "models": dict(encoder.features.models),
        "counts": {"photos": len(photos), "database": len(benchmark.database),
                   "distractors": len(benchmark.database) - len(photos) - len(extras),
                   "queries": len(benchmark.queries),
                   "transforms": transforms},
        "thresholds": {"float_cosine_distance": 1.0 - settings.threshold, "code_hamming_fraction": code_threshold,
                       "perceptual_hamming_fraction": PERCEPTUAL_THRESHOLD},
        "results": results,
        "skipped": skipped,
        "targets": check_targets(results),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    if extras or variants:
        report["counts"].update({"extra_originals": len(extras), "variants": len(variants)})
    if same_object is not None:
        report["same_object"] = same_object
    if object_counts is not None:
        report["objects"] = {"k": object_count, **object_counts}
    # the larger evaluation's targets (issue 13 item 4): the whole-image vector is the
    # default dedup representation; with detection off the "object" vector is the whole image
    whole = "image/" if "image" in settings.vectors else ("" if settings.detector == "none" else None)
    objects = "" if "object" in settings.vectors and settings.detector != "none" else None
    report["targets"] += check_larger_targets(results, same_object, whole, objects, object_count)
    return report


def run_same_object(task: SameObject, encoder: PipelineEmbedder, settings: EvalSettings) -> dict[str, Any]:
    """Score both vectors (floats and random-projection codes) on the same-object task, and the
    object sets (all K objects of each paste) when the encoder stores them: every paste ranks all
    the other pastes; relevant are those of its object.

    Returns:
        counts, the objects' and backgrounds' photo names, and per method ("float",
        "rproj-<bits>", "image/float", ...) top-1 and mAP.
    """
    from .models.hashing import RandomProjectionHasher

    encoded = encoder.encode(task.images)
    relevant = task.relevant
    results: dict[str, dict[str, Any]] = {}

    def score(key: str, distances: np.ndarray, bits: int) -> None:
        distances = np.asarray(distances, np.float64)
        np.fill_diagonal(distances, np.inf)  # a paste is not its own answer
        order = rank_order(distances, settings.seed)
        first = np.take_along_axis(relevant, order[:, :1], axis=1)[:, 0]
        results[key] = {"bits": bits, "top1": float(first.mean()),
                        "map": mean_average_precision(distances, relevant, settings.seed)}

    for vector in SINGLE:  # both, always: the task compares them
        vectors = encoded.vectors(vector)
        score(f"{PREFIX[vector]}float", cosine_distances(vectors, vectors), 32 * encoder.dim)
        if "rproj" in settings.methods:
            for bits in settings.bits:
                codes = RandomProjectionHasher(encoder.dim, bits, settings.seed)(vectors)
                score(f"{PREFIX[vector]}rproj-{bits}", hamming_distances(codes, codes), bits)
    counts = {"objects": len(task.sources), "pastes": len(task.images), "backgrounds": len(task.backgrounds)}
    if encoded.objects is not None:  # the encoder stores object sets: "objects" was asked for
        counts["objects_per_paste"] = objects_per_image(encoded.objects, encoder.config.detect.objects)
        rproj_bits = settings.bits if "rproj" in settings.methods else ()
        for k in range(1, encoder.config.detect.objects + 1):
            for key, (distances, bits) in object_set_distances(encoded.objects, encoded.objects, k, REDUCTIONS,
                                                               rproj_bits, settings.seed).items():
                score(f"objects{k}-{key}", distances, bits)
    return {"counts": counts, "objects": task.sources, "backgrounds": task.backgrounds, "results": results}
