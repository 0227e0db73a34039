"""One place for configuration: a frozen dataclass per stage, composed into PipelineConfig.

The CLI maps onto these fields one to one; the runners receive a PipelineConfig (small,
picklable) and build the heavy objects themselves, once per worker.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .storage import Retry

PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")  # as models.runtimes.PRECISION_CHOICES
DEFAULT_MAX_PIXELS = 100_000_000  # ~ a 10k x 10k photo; larger images are refused as bombs


@dataclass(frozen=True)
class DecodeConfig:
    """How image bytes become RGB arrays.

    Args:
        max_pixels: images whose header declares more pixels are refused (decompression bombs).
        max_side: decode JPEGs at a reduced scale (DCT downscale) while the long side stays
            >= this; other formats are decoded in full and resized down to it. 0 keeps full size.
        max_bytes: files larger than this are refused before they are read.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = 1024
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.max_side < 0:
            raise ConfigError(f"max_side must be >= 0, got {self.max_side}")


@dataclass(frozen=True)
class DetectConfig:
    """Main-object detection and cropping.

    Args:
        model: registry name of the detector, or "none" to skip detection.
        score_threshold: detections below it are ignored.
        select: "score" (default) the highest score; "score_area" score x box area; "stable"
            the largest of the detections within 0.1 of the best score. crop.select_main says
            what each does to the main object of near-duplicate copies.
        margin: fraction of the box size added on each side of the crop.
        batch_size: images per detector call; 0 picks one for the device
            (`PipelineConfig.detect_batch_size`).
        input_size: the long side of the detector's input in pixels; 0 keeps the model's own
            (512 for centernet-mbv3: 384 ran ~1.3x faster but lost the main object on 3 of the
            14 sample photos, 256 loses more; docs/benchmarks.md).
        keep_aspect: feed the image with its aspect ratio kept (the short side padded to a
            multiple of 128); False letterboxes it into the model's square as before.
        objects: also store up to this many detected objects per image (the main one first,
            then by score) in the `objects` list column, each with its box, label, score,
            vector and code, so that search can match any of them (`index --vector objects`);
            0 (default) stores only the main object. Each extra object costs one embedder pass.
    """

    model: str = "centernet-mbv3"
    score_threshold: float = 0.3
    select: str = "score"
    margin: float = 0.05
    batch_size: int = 0
    input_size: int = 0
    keep_aspect: bool = True
    objects: int = 0

    def __post_init__(self) -> None:
        if self.objects < 0:
            raise ConfigError(f"objects must be >= 0 (0: the main object only), got {self.objects}")
        if self.objects and not self.enabled:
            raise ConfigError("objects > 0 needs a detector: drop --no-detect or --objects")
        if self.select not in ("score", "score_area", "stable"):
            raise ConfigError(f"select must be 'score', 'score_area' or 'stable', got {self.select!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 <= self.margin <= 1.0:
            raise ConfigError(f"margin must be in [0, 1], got {self.margin}")
        if self.batch_size < 0:
            raise ConfigError(f"detector batch_size must be >= 1 (or 0 for the device's default), "
                              f"got {self.batch_size}")
        if self.input_size < 0:
            raise ConfigError(f"detector input_size must be positive (or 0 for the model's own), "
                              f"got {self.input_size}")

    @property
    def input_options(self) -> dict[str, Any]:
        """The detector keyword arguments these settings ask for beyond the model's defaults."""
        options: dict[str, Any] = {"input_size": self.input_size} if self.input_size else {}
        if not self.keep_aspect:
            options["keep_aspect"] = False
        return options

    @property
    def enabled(self) -> bool:
        return self.model.lower() != "none"


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding and binary code.

    Args:
        model: registry name of the embedder (or "onnx:PATH").
        dtype: "float32" or "float16" for the stored vector.
        hasher: "rproj" (a seeded random orthogonal projection) or the path of a learned
            hash file written by `imgfeat train-hash`.
        code_bits: bits of the binary code (a multiple of 8).
        seed: seed of the projection.
        batch_size: crops per embedder call; 0 picks one for the device
            (`PipelineConfig.embed_batch_size`).
        whole_image: also store the whole image's vector and code (`image_embedding`,
            `image_code`) beside the main object's: the one near-duplicate search and dedup
            use. Costs one more embedder input per image whose main object was cropped.
        image_aspect: embed whole images (the whole-image vector, and the crop when nothing is
            detected or detection is off) with their aspect ratio kept: the short side at the
            input size, the long side at the nearest of 1, 9/7, 11/7 or 2x it
            (`preprocess.aspect_size`), instead of stretched to a square. Needs an
            embedder that takes any input size (the default does; a fixed-size one stretches, and
            the manifest's model_digests.preprocess says which). On the 61 evaluation photos:
            near-duplicate top-1 0.986 -> 0.993, mAP 0.991 -> 0.996 (docs/quality.md).
        image_gray: also average the whole image's grayscale rendition into its vector (one
            more embedder pass per whole image): grayscale copies come closer
            (docs/quality.md).
        scales: input-size factors whose vectors are averaged per crop, e.g. (1, 0.71);
            factors other than 1 need an embedder with a free input size ("mobilenet-v2-gem").
        flip: also average each view's mirror image (2x the embedder's work).
        whiten: path of a whitening file from `imgfeat train-whiten` applied to every vector
            before hashing (the vectors shrink to its dimension), or None.
    """

    model: str = "mobilenet-v2"
    dtype: str = "float32"
    hasher: str = "rproj"
    code_bits: int = 256
    seed: int = 0
    batch_size: int = 0
    whole_image: bool = True
    image_aspect: bool = True
    image_gray: bool = False
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    whiten: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or any(not 0.1 <= s <= 4.0 for s in self.scales):
            raise ConfigError(f"embedder scales must be between 0.1 and 4, got {list(self.scales)}")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.code_bits <= 0 or self.code_bits % 8:
            raise ConfigError(f"code_bits must be a positive multiple of 8, got {self.code_bits}")
        if self.batch_size < 0:
            raise ConfigError(f"embedder batch_size must be >= 1 (or 0 for the device's default), "
                              f"got {self.batch_size}")


# Model batch sizes when the config says 0, by device: (detector, embedder). On CPU the
# 512x512 detector is fastest one image at a time (its activations for larger batches fall
# out of cache: batch 1 ran 1.15-1.3x faster than batch 8) and the embedder at 8-16
# (benchmarks/batch_sizes.py, docs/benchmarks.md). The CUDA values are the usual GPU
# starting points, not measured on a GPU by this project yet.
DEFAULT_BATCH_SIZES = {"cpu": (1, 16), "cuda": (16, 64)}


def default_workers() -> int:
    """Read + decode threads: half the cores, at least two where there are two.

    Decoding releases the GIL (simplejpeg, OpenCV). With the faster networks (OpenVINO bf16,
    static shapes) one thread bounded `--no-detect` on 1-4 Mpx photos: two ran it 1.25x
    faster on 2 cores (median of 5 interleaved runs, docs/benchmarks.md); with detection the
    second thread was within noise."""
    cores = os.cpu_count() or 1
    return 1 if cores < 2 else max(2, min(cores // 2, 16))


def default_streams() -> int:
    """Inference streams: three wherever there are two cores or more, so the networks never
    wait for the Python between them. On 2 cores, 150 photos, median of 3 interleaved runs:
    1 stream x 2 threads 9.3 img/s, 2 x 1 9.7-9.9, 3 x 1 10.2-10.4, 4 x 1 9.8."""
    return 3 if (os.cpu_count() or 1) >= 2 else 1


@dataclass(frozen=True)
class RunConfig:
    """How the run is executed.

    Args:
        workers: read + decode threads; 0 decodes in the calling thread (debugging, tests).
        shard_size: images per output Parquet file (the unit of resume).
        limit: process only the first N inputs (after sorting), 0 for all.
        device: "cpu" or "cuda".
        runtime: "auto" (OpenVINO on CPUs with native bf16, where it is ~2x faster, else
            onnxruntime; onnxruntime's CUDA provider on "cuda"), "onnxruntime" or "openvino".
        precision: "auto" (bf16 where runtime resolves to OpenVINO on a CPU with native bf16,
            else fp32), "fp32", "bf16" or "int8" (both networks quantised once, calibrated on
            the sample photos; CPU only, never picked by "auto": docs/models.md). Runtime and
            precision are resolved once, where the
            run is planned (`resolved_compute`), recorded in the manifest and kept by resumed
            runs, engine tasks and the queries of `search`/`serve`.
        threads: inference threads per stream; 0: the cores shared out among the streams
            (with one stream, the runtime's own default: every core).
        streams: batches in inference at once, each on its own thread, so one batch's
            letterbox, box decoding and cropping run while another is in the networks;
            0 picks `default_streams()`. The local runner only: engines run one per task.
        overwrite: delete an existing imgfeat output first (only its own files).
        max_error_ratio: fail the run when more than this share of images fail (1.0 never
            fails); checked as the run goes, once `min_error_count` images are done, and over
            the whole output at the end (so a rerun of a finished output gives the same verdict).
        min_error_count: images done before the error ratio can stop a run early.
        retries: tries of a read that failed for a transient reason (unreachable, timeout).
        retry_wait: seconds before the first retry, doubled each time (at most 8 s).
        retry_errors: recompute the rows of a finished output that failed for a transient
            reason (unreachable, timeout), in place; every other row is kept.
        prune: drop the output's rows whose inputs are no longer in the source (their shards
            are rewritten); without it such rows are kept.
        progress: show a progress bar (`imgfeat.extract` without `on_progress`, and the CLI).
    """

    workers: int = field(default_factory=default_workers)
    shard_size: int = 1000
    limit: int = 0
    device: str = "cpu"
    runtime: str = "auto"
    precision: str = "auto"
    threads: int = 0
    streams: int = 0
    overwrite: bool = False
    max_error_ratio: float = 1.0
    min_error_count: int = 100
    retries: int = 3
    retry_wait: float = 0.5
    retry_errors: bool = False
    prune: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.streams < 0:
            raise ConfigError(f"streams must be >= 1 (or 0 for the default), got {self.streams}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 1 (or 0 for the default), got {self.threads}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.limit < 0:
            raise ConfigError(f"limit must be >= 0, got {self.limit}")
        if self.prune and self.limit:
            raise ConfigError("prune with limit would drop the rows of every input past the limit; "
                              "run --prune without --limit")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.runtime not in ("auto", "onnxruntime", "openvino"):
            raise ConfigError(f"runtime must be 'auto', 'onnxruntime' or 'openvino', got {self.runtime!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.precision == "bf16" and (self.device == "cuda" or self.runtime == "onnxruntime"):
            raise ConfigError("bf16 runs on OpenVINO on a CPU with native bf16: use precision 'fp32' "
                              "(or 'auto') with device 'cuda' or runtime 'onnxruntime'")
        if self.precision == "int8" and self.device == "cuda":
            raise ConfigError("int8 runs on the CPU (onnxruntime or OpenVINO): use precision 'fp32' "
                              "(or 'auto') with device 'cuda'")
        if self.device == "cuda" and self.runtime == "openvino":
            raise ConfigError("device 'cuda' runs on onnxruntime's CUDA provider: use runtime "
                              "'auto' or 'onnxruntime' with it")
        if not 0.0 <= self.max_error_ratio <= 1.0:
            raise ConfigError(f"max_error_ratio must be in [0, 1], got {self.max_error_ratio}")
        if self.min_error_count < 1:
            raise ConfigError(f"min_error_count must be >= 1, got {self.min_error_count}")
        if self.retries < 1 or self.retry_wait < 0:
            raise ConfigError(f"retries must be >= 1 (1: no retry) and retry_wait >= 0, got "
                              f"{self.retries} and {self.retry_wait}")

    @property
    def compute_resolved(self) -> bool:
        """True once runtime and precision are concrete (no "auto" left)."""
        return self.runtime != "auto" and self.precision != "auto"

    def resolved_compute(self) -> "RunConfig":
        """This config with runtime and precision made concrete for this machine
        (`models.runtimes.resolve_compute`); call it once, where the run is planned.

        Raises:
            ConfigError, MissingExtra: a choice this machine cannot compute.
        """
        from .models.runtimes import resolve_compute

        runtime, precision = resolve_compute(self.runtime, self.precision, self.device)
        return dataclasses.replace(self, runtime=runtime, precision=precision)

    @property
    def retry(self) -> Retry:
        """The retry policy of reads."""
        return Retry(attempts=self.retries, wait=self.retry_wait)


# settings added after outputs already existed, with the value that reproduces those outputs:
# left out of the config fingerprint while they hold it (so an output written before them still
# resumes), and assumed where a recorded config lacks them (queries against an older index)
ADDED_LATER = {("detect", "input_size"): 0, ("detect", "keep_aspect"): True, ("detect", "objects"): 0,
               ("embed", "image_aspect"): False, ("embed", "image_gray"): False}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs, in one picklable object."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def detect_batch_size(self) -> int:
        """Images per detector call: the configured value, else the device's default."""
        return self.detect.batch_size or DEFAULT_BATCH_SIZES[self.run.device][0]

    @property
    def embed_batch_size(self) -> int:
        """Crops per embedder call: the configured value, else the device's default."""
        return self.embed.batch_size or DEFAULT_BATCH_SIZES[self.run.device][1]

    @property
    def inference_streams(self) -> int:
        """Batches the local runner keeps in inference at once."""
        return self.run.streams or default_streams()

    @property
    def inference_threads(self) -> int:
        """Threads per inference stream; 0 leaves the choice to the runtime (every core)."""
        if self.run.threads or self.inference_streams == 1:
            return self.run.threads
        return max(1, (os.cpu_count() or 1) // self.inference_streams)

    @property
    def chunk_size(self) -> int:
        """Images per pipeline batch (a decode task, an engine batch): enough to fill both
        models' batches."""
        return max(self.detect_batch_size, self.embed_batch_size)

    @classmethod
    def resolve(cls, config: "PipelineConfig | None", options: dict[str, Any]) -> "PipelineConfig":
        """The config an entry point was given, or one built from its flat options (not both)."""
        if config is not None and options:
            raise TypeError("give either config= or flat options, not both")
        return config or cls.from_options(**options)

    @classmethod
    def from_options(cls, **options: Any) -> "PipelineConfig":
        """Build from flat keyword options, as the CLI and `imgfeat.extract` take them.

        Each option name is `<stage>_<field>` or a bare field name that is unique across
        stages (e.g. `batch_size` sets both model batch sizes, `detector`/`embedder` set
        the model names). Unknown names raise ConfigError listing the valid ones.
        """
        aliases = {"detector": ("detect", "model"), "embedder": ("embed", "model")}
        stages = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, dict[str, Any]] = {name: {} for name in stages}
        valid = set(aliases)
        by_field: dict[str, list[str]] = {}
        for stage_name in stages:
            stage_cls = {"decode": DecodeConfig, "detect": DetectConfig,
                         "embed": EmbedConfig, "run": RunConfig}[stage_name]
            for f in dataclasses.fields(stage_cls):
                valid.add(f"{stage_name}_{f.name}")
                by_field.setdefault(f.name, []).append(stage_name)
        valid.update(by_field)
        for key, value in options.items():
            if value is None:
                continue
            if key in aliases:
                stage_name, name = aliases[key]
                values[stage_name][name] = value
            elif key in by_field:
                for stage_name in by_field[key]:
                    values[stage_name][key] = value
            elif "_" in key and key.split("_", 1)[0] in stages and key.split("_", 1)[1] in by_field:
                stage_name, name = key.split("_", 1)
                if stage_name not in by_field[name]:
                    raise ConfigError(f"unknown option {key!r}")
                values[stage_name][name] = value
            else:
                raise ConfigError(f"unknown option {key!r}; valid options: {', '.join(sorted(valid))}")
        return cls(
            decode=DecodeConfig(**values["decode"]),
            detect=DetectConfig(**values["detect"]),
            embed=EmbedConfig(**values["embed"]),
            run=RunConfig(**values["run"]),
        )
