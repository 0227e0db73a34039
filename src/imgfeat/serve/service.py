"""What the HTTP service does, without HTTP: embed, search, thumbnails (groups: groups.py).

    service = SearchService(FeatureIndex.load("index/"), groups_path="groups.parquet")
    result = await service.embed(image_bytes)              # box, label, score, embedding, code
    result = await service.search(image_bytes, k=10)        # the query's box + top-k neighbours
    service.close()

Uploads are decoded in the caller's thread (at most `ServeConfig.max_decodes` at once, since
one decode of a bomb-like PNG costs 1.4x its RGB size) with the index's own DecodeConfig and
the lower upload pixel cap; the models run in one worker thread on micro-batches gathered from
every concurrent request (`MicroBatcher`), with the PipelineConfig the index was extracted
with, so an uploaded image is embedded exactly as the indexed ones were. Every bad input
raises `RequestError` (an HTTP status, a short kind and a sentence); nothing here trusts a
file name or content type: the bytes are sniffed by the decoder.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


from ..config import PipelineConfig
from ..decode import Decoded, decode_image
from ..errors import ConfigError
from ..dataset import embedding_matrix
from ..retrieval.search import query_config, query_values, search_rows
from ..sources import Item
from ..stages import Features, ImageBatch
from ..thumbs import ThumbnailError, thumbnail_of
from .batching import MicroBatcher
from .responses import RequestError, floats, public_metadata, score_of

CODE_ENCODING = "hex"  # the binary code in JSON: numpy.packbits bytes as lowercase hex

# the default upload pixel cap: decoding costs ~1.4x the RGB size at its peak (measured by
# benchmarks/serve_upload_memory.py: 40 Mpx +163 MB, 81 Mpx +321 MB), and several decode at once
UPLOAD_MAX_PIXELS = 40_000_000

# decode error kind (decode.py) -> HTTP status
_DECODE_STATUS = {"empty": 400, "too-large": 413, "not-an-image": 415, "corrupt": 422}


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs; the CLI's `imgfeat serve` options map onto it.

    Args:
        max_upload_bytes: larger request bodies are refused (413) before they are read.
        max_pixels: images declaring more pixels are refused (413); None: the smaller of
            `UPLOAD_MAX_PIXELS` and the index's extraction cap.
        max_k: the most neighbours one search returns (larger `k` is capped).
        batch_size: most images per model batch.
        batch_wait_ms: how long the first request of a batch waits for others.
        thumb_size: long side of /thumb images in pixels.
        thumb_cache: thumbnails kept in memory.
        threads: inference threads (0: the runtime decides).
        max_decodes: uploads decoded at once (0: the number of cores); the others wait.
        allowed_hosts: `Host` names answered besides the bound address and localhost.
        token: the bearer token every route but /healthz requires (None: no token).
        body_timeout_s: a request body must arrive within this many seconds (else 408).
        header_timeout_s: a connection must send its request headers within this (else closed).
        keep_alive_s: an idle keep-alive connection is closed after this.
        max_connections: connections and requests at once; more get 503 from uvicorn.
        docs: serve /docs (Swagger UI, loaded from a CDN) as well as /openapi.json.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int | None = None
    max_k: int = 100
    batch_size: int = 16
    batch_wait_ms: float = 5.0
    thumb_size: int = 256
    thumb_cache: int = 2048
    threads: int = 0
    max_decodes: int = 0
    allowed_hosts: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 32  # x max_upload_bytes: the most request bodies held at once
    docs: bool = False

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ConfigError(f"max_upload_bytes must be >= 1, got {self.max_upload_bytes}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_k < 1:
            raise ConfigError(f"max_k must be >= 1, got {self.max_k}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms}")
        if not 16 <= self.thumb_size <= 1024:
            raise ConfigError(f"thumb_size must be in [16, 1024], got {self.thumb_size}")
        if self.max_decodes < 0 or self.max_connections < 1:
            raise ConfigError("max_decodes must be >= 0 and max_connections >= 1")
        if min(self.body_timeout_s, self.header_timeout_s, self.keep_alive_s) <= 0:
            raise ConfigError("body_timeout_s, header_timeout_s and keep_alive_s must be > 0")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the token must be at least 16 characters (e.g. `openssl rand -hex 16`)")

    @property
    def decodes_at_once(self) -> int:
        return self.max_decodes or os.cpu_count() or 1


def pipeline_config_for(index_config: dict[str, Any] | None, serve: ServeConfig) -> PipelineConfig:
    """The PipelineConfig to embed uploads with: the index's own, run in this process.

    Args:
        index_config: `FeatureIndex.config`, the PipelineConfig dict used at extraction.
        serve: the service's options (pixel cap and threads override the index's; uploads get
            at most `UPLOAD_MAX_PIXELS` unless `serve.max_pixels` says otherwise).

    Raises:
        ConfigError: the index carries no extraction config.
    """
    threads = serve.threads or ((index_config or {}).get("run") or {}).get("threads", 0)
    config = query_config(index_config or {}, threads=threads)  # the same rules as `imgfeat search`
    max_pixels = serve.max_pixels or min(UPLOAD_MAX_PIXELS, config.decode.max_pixels)
    return dataclasses.replace(config, decode=dataclasses.replace(config.decode, max_pixels=max_pixels))


@dataclass
class _Job:
    decoded: Decoded
    k: int  # 0: embed only


class SearchService:
    """The models, the index and the duplicate groups behind the HTTP routes.

    Args:
        index: a loaded `imgfeat.index.FeatureIndex`.
        groups_path: the groups Parquet written by `imgfeat dedup` (None: no duplicates view).
        reviews_path: where "not duplicate" verdicts go (reviews.jsonl); None: beside
            `groups_path`, or no reviews when that is None too.
        config: service options.

    Raises:
        ConfigError: the index lacks an extraction config, or its models differ from the ones
            this config builds, or the groups file lacks the dedup columns (`DuplicateGroups`).
    """

    def __init__(self, index: Any, groups_path: str | os.PathLike | None = None,
                 reviews_path: str | os.PathLike | None = None, config: ServeConfig | None = None):
        self.index = index
        self.config = config or ServeConfig()
        self.pipeline = pipeline_config_for(index.config, self.config)
        crop = getattr(index, "crop", "object")
        if crop == "whole-image":  # whole-image vectors: no detection for uploads
            self.pipeline = dataclasses.replace(
                self.pipeline, detect=dataclasses.replace(self.pipeline.detect, model="none", objects=0))
        elif crop == "object":  # one vector per upload
            self.pipeline = dataclasses.replace(self.pipeline, detect=dataclasses.replace(self.pipeline.detect,
                                                                                          objects=0))
        self.features = Features(self.pipeline)
        if self.features.dim != index.dim:
            raise ConfigError(f"the index holds {index.dim}-d vectors but embedder "
                              f"{self.features.embedder.name!r} makes {self.features.dim}-d ones")
        from .groups import DuplicateGroups

        self.duplicates = DuplicateGroups(index, groups_path, reviews_path)
        self._decoding = threading.BoundedSemaphore(self.config.decodes_at_once)
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self.batcher: MicroBatcher[_Job, dict] = MicroBatcher(
            self._process, max_batch=self.config.batch_size, max_wait_s=self.config.batch_wait_ms / 1000)

    def close(self) -> None:
        """Stop the batch worker (finishing queued requests)."""
        self.batcher.close()

    # --- embedding and search -------------------------------------------------------------

    def decode(self, content: bytes) -> Decoded:
        """Decode an upload with the index's DecodeConfig (and the service's pixel cap).

        Raises:
            RequestError: 400 empty, 413 too many pixels, 415 not an image, 422 corrupt.
        """
        with self._decoding:  # bounds the memory of concurrent decodes
            decoded = decode_image(content, self.pipeline.decode)
        if decoded.error is not None:
            kind, _, detail = decoded.error.partition(": ")
            raise RequestError(_DECODE_STATUS.get(kind, 422), kind, detail or decoded.error)
        return decoded

    async def embed(self, decoded: Decoded) -> dict[str, Any]:
        """Box, label, score, embedding and code of one decoded upload (micro-batched)."""
        return await self.batcher.run(_Job(decoded, 0))

    async def search(self, decoded: Decoded, k: int) -> dict[str, Any]:
        """The upload's features and its `k` nearest indexed images (micro-batched).

        Args:
            decoded: the upload, from `decode`.
            k: neighbours wanted; capped by `config.max_k` and the index size.
        """
        k = max(1, min(k, self.config.max_k, len(self.index)))
        return await self.batcher.run(_Job(decoded, k))

    def _process(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """One model batch: features of every job, then one index search for those that ask."""
        batch = ImageBatch([Item(f"upload-{i}", "upload") for i in range(len(jobs))], [job.decoded for job in jobs])
        table = self.features(batch)
        rows = table.select(["status", "error", "width", "height", "box", "label", "score", "crop",
                             "code"]).to_pylist()
        embeddings = embedding_matrix(table.column("embedding"), self.features.dim)
        results: list[dict[str, Any]] = []
        for row, embedding in zip(rows, embeddings):
            if row["status"] != "ok":  # decode already passed, so this is the model's refusal
                results.append({"error": row["error"] or "failed"})
                continue
            results.append({
                "width": row["width"], "height": row["height"], "box": floats(row["box"]),
                "label": row["label"], "score": score_of(row["score"]), "crop": row["crop"],
                "embedding": floats(embedding), "code": row["code"].hex(),
                "code_encoding": CODE_ENCODING, "code_bits": len(row["code"]) * 8,
                "models": dict(self.features.models),
            })
        searching = [i for i, job in enumerate(jobs) if job.k > 0 and "error" not in results[i]]
        if searching:
            # an objects index: each upload searches with every object found in it
            queries, owners = query_values(table, searching, "embedding", self.index)
            found = search_rows(self.index, queries, owners, len(searching), max(jobs[i].k for i in searching),
                                "embedding")
            hits = [list(zip(row_ids, scores, entries))[:jobs[i].k]
                    for (scores, row_ids, entries), i in zip(found, searching)]
            # one metadata lookup for the whole batch: each call has a fixed cost
            wanted = list(dict.fromkeys(entry for row in hits for _, _, entry in row))
            metadata = dict(zip(wanted, self.index.metadata(wanted))) if wanted else {}
            for row, i in enumerate(searching):
                neighbours = [{"id": item_id, "score": score, **public_metadata(metadata[entry])}
                              for item_id, score, entry in hits[row]]
                results[i] = {"query": results[i], "k": jobs[i].k, "results": neighbours}
        return results

    # --- items and thumbnails -------------------------------------------------------------

    def item(self, item_id: str) -> dict[str, Any]:
        """Metadata of an indexed image.

        Raises:
            RequestError: 404 when the id is not in the index.
        """
        self._require(item_id)
        meta = self.index.metadata([item_id])[0]
        if meta is None:
            raise RequestError(404, "unknown-id", f"no item {item_id!r} in the index")
        return {"id": item_id, **public_metadata(meta)}

    def thumbnail(self, item_id: str) -> bytes:
        """A JPEG thumbnail of an indexed image, read from the path the index recorded.

        Only ids in the index are served; the path comes from the index, never the request.

        Raises:
            RequestError: 404 for an unknown id or an image that can no longer be read.
        """
        self._require(item_id)
        with self._thumbs_lock:
            if item_id in self._thumbs:
                self._thumbs.move_to_end(item_id)
                return self._thumbs[item_id]
        meta = self.index.metadata([item_id])[0]
        if meta is None:
            raise RequestError(404, "unknown-id", f"no item {item_id!r} in the index")
        thumb = self._make_thumbnail(meta["path"])
        with self._thumbs_lock:
            self._thumbs[item_id] = thumb
            while len(self._thumbs) > self.config.thumb_cache:
                self._thumbs.popitem(last=False)
        return thumb

    def _make_thumbnail(self, path: str) -> bytes:
        try:
            return thumbnail_of(path, side=self.config.thumb_size, max_bytes=self.pipeline.decode.max_bytes,
                                max_pixels=self.pipeline.decode.max_pixels)
        except ThumbnailError as exc:
            raise RequestError(404, "image-unavailable", f"the indexed image at {path}: {exc}") from exc

    def _require(self, item_id: str) -> None:
        if not self.index.contains(item_id):
            raise RequestError(404, "unknown-id", f"no item {item_id!r} in the index")

    def health(self) -> dict[str, Any]:
        """Index size, models and batching figures for /healthz."""
        stats = self.batcher.stats
        return {
            "status": "ok", "items": len(self.index), "dim": self.index.dim,
            "models": dict(self.features.models),
            "groups": len(self.duplicates.groups) if self.duplicates.groups_path else None,
            "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.config.batch_wait_ms,
                         "batches": stats.batches, "images": stats.jobs,
                         "mean_batch": round(stats.mean_batch, 2), "largest_batch": stats.largest},
        }
