"""The pipeline's stages as callables over batches; every runner calls these.

    ReadDecode(source, config)(items)       -> ImageBatch      light: runs in decode threads
    Features(config)(ImageBatch)            -> pyarrow.Table   heavy: loads the models once
    Pipeline(config)(table of id, path, content) -> pyarrow.Table   both, for table engines

A batch travels as one `ImageBatch` from read to the table: its items, each one's decoded
image or the reason it failed, and the seconds spent so far. A failed read or decode is an
error row in the table; `ImageBatch.error_kinds()` counts them without reading the table.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .config import DecodeConfig, PipelineConfig
from .crop import crop, expand_box, scale_box, select_main, select_objects
from .decode import Decoded, decode_image
from .errors import ConfigError
from .models import create_detector, create_embedder, create_hasher
from .models.embedders import whole_image_embedder, with_views
from .models.preprocess import RESIZE_VERSION
from .schema import (
    CROP_FULL_DETECT_OFF, CROP_FULL_NO_DETECTION, CROP_OBJECT, FeatureRows, ObjectRows, feature_table, output_schema,
)
from .sources import Item, ReadResult, Source
from .storage import Retry
from .whitening import load_whitening


def whole_image_views(embedder: Any) -> str:
    """What the preprocess marker adds for whole images: "+image-aspect" when they keep their
    aspect ratio, "+image-gray" when their grayscale rendition is averaged in."""
    return ("+image-aspect" if getattr(embedder, "keep_aspect", False) else "") + \
        ("+image-gray" if getattr(embedder, "gray", False) else "")


def error_kind(reason: str) -> str:
    """The kind of an error reason: "corrupt: cannot decode (...)" -> "corrupt"."""
    return reason.split(":", 1)[0]


@dataclass
class ImageBatch:
    """Inputs on their way through the pipeline, in order.

    Attributes:
        items: the inputs.
        decoded: per input, the decoded image or `Decoded(error=...)`.
        seconds: time spent on this batch per stage so far ("read", "decode").
    """

    items: list[Item]
    decoded: list[Decoded]
    seconds: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def error_kinds(self) -> Counter:
        """Failed inputs by error kind."""
        return Counter(error_kind(d.error) for d in self.decoded if d.error is not None)

    @classmethod
    def of_images(cls, images: Sequence[np.ndarray], prefix: str = "image") -> "ImageBatch":
        """A batch of images already decoded (queries, benchmarks): ids "<prefix>-<i>"."""
        items = [Item(f"{prefix}-{i}", f"{prefix}#{i}") for i in range(len(images))]
        return cls(items, [Decoded(image, image.shape[1], image.shape[0]) for image in images])


class StageTimer:
    """Seconds spent per stage, summed over batches (reported by every runner). Safe to
    add to from several threads (the inference streams, the writer)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def merge(self, other: dict[str, float]) -> None:
        with self._lock:
            for stage, seconds in other.items():
                self.seconds[stage] += seconds


def decode_results(results: Sequence[ReadResult], config: DecodeConfig) -> list[Decoded]:
    """Decode what was read; an input that could not be read stays an error."""
    return [Decoded(None, error=r.error or "read-error: no content") if r.error is not None or r.content is None
            else decode_image(r.content, config) for r in results]


class ReadDecode:
    """Read a batch of items from a source and decode them. Cheap to build; picklable.

    Args:
        source: where the items come from (a `Source.reader()` is enough).
        config: decoding settings (pixel cap, reduced size, byte cap).
        retry: retries of transient read failures (unreachable, timeout).
    """

    def __init__(self, source: Source, config: DecodeConfig, retry: Retry = Retry()):
        self.source = source
        self.config = config
        self.retry = retry

    def __call__(self, items: Sequence[Item]) -> ImageBatch:
        start = time.perf_counter()
        results = self.source.read(items, self.config.max_bytes, self.retry)
        read_done = time.perf_counter()
        decoded = decode_results(results, self.config)
        return ImageBatch(list(items), decoded, {"read": read_done - start, "decode": time.perf_counter() - read_done})


def _detector(config: PipelineConfig, kwargs: dict[str, Any]) -> Any:
    """The configured detector; input settings it cannot take are a configuration error."""
    options = config.detect.input_options
    try:
        return create_detector(config.detect.model, min_score=config.detect.score_threshold, **options, **kwargs)
    except TypeError as exc:
        if not options:
            raise
        raise ConfigError(f"detector {config.detect.model!r} does not take the input settings "
                          f"{sorted(options)}: leave --detect-size / --detect-square at their defaults "
                          "for it") from exc


class Features:
    """Detect the main object, crop, embed and hash a batch of decoded images.

    Loads the detector, embedder and hasher once in `__init__`; call it on any number of
    batches, from several threads at once (the local runner's inference streams: the
    runtimes' sessions are safe to share). Returns a table in the output schema, one row
    per input, errors included.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        kwargs = {"device": config.run.device, "threads": config.inference_threads,
                  "runtime": config.run.runtime, "precision": config.run.precision}
        # min_score: the detector may skip what select_main would ignore
        self.detector = _detector(config, kwargs) if config.detect.enabled else None
        base = create_embedder(config.embed.model, **kwargs)
        self.embedder = with_views(base, config.embed.scales, config.embed.flip)
        # whole images at their own aspect ratio, where the embedder takes any size (else None:
        # stretched like the crops); the manifest's preprocess says which
        self.image_embedder = whole_image_embedder(base, config.embed.scales, config.embed.flip,
                                                   config.embed.image_aspect, config.embed.image_gray)
        # the stored vectors: the embedder's, or whitened to the whitening's (smaller) size
        self.whitening = load_whitening(config.embed.whiten, self.embedder.dim) if config.embed.whiten else None
        self.dim = self.whitening.dim if self.whitening else self.embedder.dim
        self.hasher = create_hasher(config.embed.hasher, self.dim, config.embed.code_bits, config.embed.seed)
        self.schema = output_schema(self.dim, self.hasher.bits // 8, config.embed.dtype, config.embed.whole_image,
                                    objects=config.detect.objects > 0)
        self.models = {
            "detector": self.detector.name if self.detector else "none",
            # whitened vectors are another embedding: rows and indexes must not mix them
            "embedder": self.embedder.name + (f"+{self.whitening.name}" if self.whitening else ""),
            "hasher": self.hasher.name,
        }
        self.digests = {
            "detector": getattr(self.detector, "digest", None),
            "embedder": getattr(self.embedder, "digest", None),
            "runtime": getattr(self.embedder, "runtime", None),  # what ran the models, for the manifest
            # how images were resized for the models
            "preprocess": RESIZE_VERSION + whole_image_views(self.image_embedder),
        }
        if self.whitening:
            self.digests["whitening"] = self.whitening.digest
        self.timer = StageTimer()

    def _label(self, index: float) -> str:
        labels = getattr(self.detector, "labels", ())
        i = int(index)
        return labels[i] if 0 <= i < len(labels) and labels[i] else str(i)

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Detections per image, in that image's pixels, in detector-sized batches."""
        assert self.detector is not None
        size = self.config.detect_batch_size
        out: list[np.ndarray] = []
        for i in range(0, len(images), size):
            out.extend(self.detector(images[i:i + size]))
        return out

    def embed(self, crops: list[np.ndarray], whole: bool = False) -> np.ndarray:
        """L2-normalised embeddings of the crops (whitened, with a whitening), in embedder-sized
        batches; `whole`: they are whole images (embedded at their own aspect ratio when the
        embedder allows it)."""
        embedder = self.image_embedder if whole and self.image_embedder is not None else self.embedder
        size = self.config.embed_batch_size
        parts = [embedder(crops[i:i + size]) for i in range(0, len(crops), size)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), np.float32)
        return self.whitening(vectors) if self.whitening else vectors

    def hash(self, vectors: np.ndarray) -> np.ndarray:
        """Packed binary codes of embeddings."""
        return self.hasher(vectors) if len(vectors) else np.zeros((0, self.hasher.bits // 8), np.uint8)

    def _objects(self, good: list[int], batch: ImageBatch, detections: list, chosen: list[list[int]],
                 main_boxes: list[np.ndarray], embeddings: np.ndarray, codes: np.ndarray,
                 extra_vectors: np.ndarray, extra_codes: np.ndarray) -> ObjectRows:
        """The `objects` column's entries: per image the main object (or, with nothing detected,
        the whole image) with the vector already computed for it, then its other kept objects,
        whose vectors are `extra_vectors` in order."""
        boxes, labels, scores, vectors, object_codes = [], [], [], [], []
        extra = 0
        for n, (i, dets, kept) in enumerate(zip(good, detections, chosen)):
            boxes.append(main_boxes[n])
            labels.append(self._label(dets[kept[0]][5]) if kept else None)
            scores.append(float(dets[kept[0]][4]) if kept else np.nan)
            vectors.append(embeddings[n])
            object_codes.append(codes[n])
            for j in kept[1:]:
                boxes.append(scale_box(dets[j], *batch.decoded[i].scale))
                labels.append(self._label(dets[j][5]))
                scores.append(float(dets[j][4]))
                vectors.append(extra_vectors[extra])
                object_codes.append(extra_codes[extra])
                extra += 1
        dim, width = embeddings.shape[1], codes.shape[1]
        return ObjectRows(count=np.asarray([max(1, len(kept)) for kept in chosen], np.int32),
                          box=np.asarray(boxes, np.float32).reshape(-1, 4), label=labels,
                          score=np.asarray(scores, np.float32),
                          embedding=np.asarray(vectors, embeddings.dtype).reshape(-1, dim),
                          code=np.asarray(object_codes, np.uint8).reshape(-1, width))

    def __call__(self, batch: ImageBatch) -> pa.Table:
        good = [i for i, d in enumerate(batch.decoded) if d.error is None]
        images = [batch.decoded[i].image for i in good]

        start = time.perf_counter()
        detections = self.detect(images) if self.detector is not None else [None] * len(images)
        self.timer.add("detect", time.perf_counter() - start)

        start = time.perf_counter()
        crops, boxes, labels, scores, kinds = [], [], [], [], []
        # extract --objects K: per image, the detections kept (main first); their crops other
        # than the main one's are embedded after the crops and whole images
        chosen: list[list[int]] = []
        extra_crops: list[np.ndarray] = []
        detect_cfg = self.config.detect
        for i, image, dets in zip(good, images, detections):
            decoded = batch.decoded[i]
            main = None if dets is None else select_main(dets, detect_cfg.score_threshold, detect_cfg.select)
            chosen.append(select_objects(dets, detect_cfg.score_threshold, detect_cfg.objects, main)
                          if dets is not None else [])
            if main is None:
                kinds.append(CROP_FULL_DETECT_OFF if dets is None else CROP_FULL_NO_DETECTION)
                boxes.append(np.asarray([0, 0, decoded.width, decoded.height], dtype=np.float32))
                labels.append(None)
                scores.append(np.nan)
                crops.append(image)
            else:
                box = dets[main]
                kinds.append(CROP_OBJECT)
                labels.append(self._label(box[5]))
                scores.append(float(box[4]))
                boxes.append(scale_box(box, *decoded.scale))
                crops.append(crop(image, expand_box(box, detect_cfg.margin, image.shape[1], image.shape[0])))
            extra_crops.extend(crop(image, expand_box(dets[j], detect_cfg.margin, image.shape[1], image.shape[0]))
                               for j in chosen[-1][1:])
        self.timer.add("crop", time.perf_counter() - start)

        start = time.perf_counter()
        # object crops (and the other kept objects) in one pass, whole images in another: those
        # without an object, and with whole_image every image
        object_rows = [n for n, kind in enumerate(kinds) if kind == CROP_OBJECT]
        whole_rows = [n for n, kind in enumerate(kinds) if kind != CROP_OBJECT or self.config.embed.whole_image]
        crop_vectors = self.embed([crops[n] for n in object_rows] + extra_crops)
        crop_codes = self.hash(crop_vectors)
        whole_vectors = self.embed([images[n] for n in whole_rows], whole=True)
        whole_codes = self.hash(whole_vectors)
        embeddings = np.zeros((len(kinds), self.dim), np.float32)
        object_codes = np.zeros((len(kinds), self.hasher.bits // 8), np.uint8)
        embeddings[object_rows], object_codes[object_rows] = crop_vectors[:len(object_rows)], \
            crop_codes[:len(object_rows)]
        by_whole = {n: j for j, n in enumerate(whole_rows)}
        for n, kind in enumerate(kinds):
            if kind != CROP_OBJECT:  # the whole image was the crop
                embeddings[n], object_codes[n] = whole_vectors[by_whole[n]], whole_codes[by_whole[n]]
        image_embeddings = image_codes = None
        if self.config.embed.whole_image:
            image_embeddings, image_codes = whole_vectors, whole_codes
        objects = None
        if detect_cfg.objects:
            objects = self._objects(good, batch, detections, chosen, boxes, embeddings, object_codes,
                                    crop_vectors[len(object_rows):], crop_codes[len(object_rows):])
        self.timer.add("embed", time.perf_counter() - start)
        rows = FeatureRows(
            index=np.asarray(good, dtype=np.int64),
            width=np.asarray([batch.decoded[i].width for i in good], dtype=np.int32),
            height=np.asarray([batch.decoded[i].height for i in good], dtype=np.int32),
            box=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), label=labels,
            score=np.asarray(scores, dtype=np.float32), crop=kinds, embedding=embeddings, code=object_codes,
            image_embedding=image_embeddings, image_code=image_codes, objects=objects)
        return feature_table([item.id for item in batch.items], [item.uri for item in batch.items],
                             [d.error for d in batch.decoded], rows, self.schema, self.models)


class Pipeline:
    """Decode + Features over an Arrow table with columns id, path, content (binary).

    The form the table engines (Spark's mapInArrow, Ray's map_batches) call: it needs no
    Source, since the engine has already read the bytes.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.features = Features(config)

    def __call__(self, table: pa.Table) -> pa.Table:
        items = [Item(i, p, p) for i, p in zip(table.column("id").to_pylist(), table.column("path").to_pylist())]
        results = [ReadResult(item, content=c, error=None if c is not None else "read-error: null content")
                   for item, c in zip(items, table.column("content").to_pylist())]
        return self.features(ImageBatch(items, decode_results(results, self.config.decode)))
