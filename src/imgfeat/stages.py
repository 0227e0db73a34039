"""The pipeline's stages as callables over batches; every runner calls these.

    ReadDecode(source, config)(items)       -> list[Decoded]   light: runs in decode threads
    Features(config)(decoded)               -> pyarrow.Table   heavy: loads the models once
    Pipeline(config)(table of id, path, content) -> pyarrow.Table   both, for table engines

A failed read or decode travels as a Decoded with `error`; it becomes an error row.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from .config import DecodeConfig, PipelineConfig
from .crop import crop, expand_box, scale_box, select_main
from .decode import Decoded, decode_image
from .models import create_detector, create_embedder, create_hasher
from .schema import (
    CROP_FULL_DETECT_OFF, CROP_FULL_NO_DETECTION, CROP_OBJECT, STATUS_ERROR, Row,
    output_schema, rows_to_table,
)
from .sources import Item, Source


@dataclass
class DecodedItem:
    """A decoded image with the input it came from."""

    item: Item
    decoded: Decoded


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


def decode_contents(items: Sequence[Item], contents: Sequence[bytes | None], errors: Sequence[str | None],
                    config: DecodeConfig) -> list[DecodedItem]:
    """Decode bytes already read; an item with an error (or no bytes) stays an error."""
    out = []
    for item, content, error in zip(items, contents, errors):
        if error is not None or content is None:
            out.append(DecodedItem(item, Decoded(None, error=error or "read-error: no content")))
        else:
            out.append(DecodedItem(item, decode_image(content, config)))
    return out


class ReadDecode:
    """Read a batch of items from a source and decode them. Cheap to build; picklable."""

    def __init__(self, source: Source, config: DecodeConfig):
        self.source = source
        self.config = config

    def __call__(self, items: Sequence[Item]) -> tuple[list[DecodedItem], dict[str, float]]:
        start = time.perf_counter()
        results = self.source.read(items, self.config.max_bytes)
        read_done = time.perf_counter()
        decoded = decode_contents(items, [r.content for r in results], [r.error for r in results], self.config)
        return decoded, {"read": read_done - start, "decode": time.perf_counter() - read_done}


class Features:
    """Detect the main object, crop, embed and hash a batch of decoded images.

    Loads the detector, embedder and hasher once in `__init__`; call it on any number of
    batches, from several threads at once (the local runner's inference streams: the
    runtimes' sessions are safe to share). Returns a table in the output schema, one row
    per input, errors included.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        kwargs = {"device": config.run.device, "threads": config.inference_threads, "runtime": config.run.runtime}
        self.detector = create_detector(config.detect.model, **kwargs) if config.detect.enabled else None
        if hasattr(self.detector, "min_score"):  # it may skip what select_main would ignore
            self.detector.min_score = config.detect.score_threshold
        self.embedder = create_embedder(config.embed.model, **kwargs)
        self.hasher = create_hasher(config.embed.hasher, self.embedder.dim, config.embed.code_bits,
                                    config.embed.seed)
        self.schema = output_schema(self.embedder.dim, self.hasher.bits // 8, config.embed.dtype)
        self.models = {
            "detector": self.detector.name if self.detector else "none",
            "embedder": self.embedder.name,
            "hasher": self.hasher.name,
        }
        self.digests = {
            "detector": getattr(self.detector, "digest", None),
            "embedder": getattr(self.embedder, "digest", None),
            "runtime": getattr(self.embedder, "runtime", None),  # what ran the models, for the manifest
        }
        self.timer = StageTimer()

    def _label(self, index: float) -> str:
        labels = getattr(self.detector, "labels", ())
        i = int(index)
        return labels[i] if 0 <= i < len(labels) else str(i)

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Detections per image, in that image's pixels, in detector-sized batches."""
        assert self.detector is not None
        size = self.config.detect_batch_size
        out: list[np.ndarray] = []
        for i in range(0, len(images), size):
            out.extend(self.detector(images[i:i + size]))
        return out

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings of the crops, in embedder-sized batches."""
        size = self.config.embed_batch_size
        parts = [self.embedder(crops[i:i + size]) for i in range(0, len(crops), size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), np.float32)

    def __call__(self, batch: Sequence[DecodedItem]) -> pa.Table:
        rows = [Row(id=d.item.id, path=d.item.uri) for d in batch]
        good = [i for i, d in enumerate(batch) if d.decoded.error is None]
        for i, d in enumerate(batch):
            if d.decoded.error is not None:
                rows[i].status, rows[i].error = STATUS_ERROR, d.decoded.error
        images = [batch[i].decoded.image for i in good]

        start = time.perf_counter()
        detections = self.detect(images) if self.detector is not None else [None] * len(images)
        self.timer.add("detect", time.perf_counter() - start)

        start = time.perf_counter()
        crops = []
        detect_cfg = self.config.detect
        for i, image, dets in zip(good, images, detections):
            decoded, row = batch[i].decoded, rows[i]
            row.width, row.height = decoded.width, decoded.height
            sx, sy = decoded.scale
            main = None if dets is None else select_main(dets, detect_cfg.score_threshold, detect_cfg.select)
            if main is None:
                row.crop = CROP_FULL_DETECT_OFF if dets is None else CROP_FULL_NO_DETECTION
                row.box = np.asarray([0, 0, decoded.width, decoded.height], dtype=np.float32)
                crops.append(image)
            else:
                box = dets[main]
                row.crop, row.label, row.score = CROP_OBJECT, self._label(box[5]), float(box[4])
                row.box = scale_box(box, sx, sy)
                window = expand_box(box, detect_cfg.margin, image.shape[1], image.shape[0])
                crops.append(crop(image, window))
        self.timer.add("crop", time.perf_counter() - start)

        start = time.perf_counter()
        embeddings = self.embed(crops)
        codes = self.hasher(embeddings) if len(crops) else np.zeros((0, self.hasher.bits // 8), np.uint8)
        self.timer.add("embed", time.perf_counter() - start)
        for i, embedding, code in zip(good, embeddings, codes):
            rows[i].embedding, rows[i].code = embedding, code.tobytes()
        return rows_to_table(rows, self.schema, self.models)


class Pipeline:
    """Decode + Features over an Arrow table with columns id, path, content (binary).

    The form the table engines (Spark's mapInArrow, Ray's map_batches) call: it needs no
    Source, since the engine has already read the bytes.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.features = Features(config)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column("id").to_pylist()
        paths = table.column("path").to_pylist()
        contents = table.column("content").to_pylist()
        items = [Item(i, p, p) for i, p in zip(ids, paths)]
        errors = [None if c is not None else "read-error: null content" for c in contents]
        decoded = decode_contents(items, contents, errors, self.config.decode)
        return self.features(decoded)
