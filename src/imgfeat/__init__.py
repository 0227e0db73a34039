"""imgfeat: turn large image collections into searchable features.

    import imgfeat
    report = imgfeat.extract("photos/", "features/", batch_size=16)
    print(imgfeat.info("features/"))
    index = imgfeat.index("features/", "index/"); imgfeat.search(index, ["query.jpg"], k=5)
    groups = imgfeat.dedup("features/", threshold=0.85)

Per-batch functions for your own loops or engines: `decode_image`, `create_detector`,
`create_embedder`, `create_hasher`, `select_main`, `expand_box`, `crop`, and the stage
classes `ReadDecode`, `Features`, `Pipeline`.
"""

from ._version import __version__

from .api import dedup, extract, finetune, index, info, load_index, read_features, search  # noqa: E402
from .config import DecodeConfig, DetectConfig, EmbedConfig, PipelineConfig, RunConfig  # noqa: E402
from .crop import crop, expand_box, select_main  # noqa: E402
from .decode import Decoded, decode_image  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError, ImgfeatError, MissingExtra, ModelUnavailable, OutputError, SourceError,
    TooManyErrors, UnknownModel,
)
from .models import create_detector, create_embedder, create_hasher  # noqa: E402
from .runners import RunReport  # noqa: E402
from .sources import Item, open_source  # noqa: E402
from .stages import Features, Pipeline, ReadDecode  # noqa: E402

__all__ = [
    "ConfigError", "DecodeConfig", "Decoded", "DetectConfig", "EmbedConfig", "Features",
    "ImgfeatError", "Item", "MissingExtra", "ModelUnavailable", "OutputError", "Pipeline",
    "PipelineConfig", "ReadDecode", "RunConfig", "RunReport", "SourceError", "TooManyErrors",
    "UnknownModel", "__version__", "create_detector", "create_embedder", "create_hasher", "crop",
    "decode_image", "dedup", "expand_box", "extract", "finetune", "index", "info", "load_index", "open_source",
    "read_features", "search", "select_main",
]
