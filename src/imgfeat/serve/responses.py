"""The JSON shapes of the service's answers: request errors, and an indexed item's metadata
with NaN / NA as null (shared by the search service and the duplicate groups)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class RequestError(Exception):
    """A bad request: becomes the JSON body {"error": kind, "detail": detail} with `status`."""

    def __init__(self, status: int, kind: str, detail: str):
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail


def floats(values: Any) -> list[float] | None:
    """JSON-safe floats (NaN becomes None) from an array, list or None."""
    if values is None or (np.ndim(values) == 0 and absent(values)):
        return None
    return [None if math.isnan(v) else v for v in np.asarray(values, dtype=np.float64).tolist()]


def score_of(value: Any) -> float | None:
    return None if absent(value) else float(value)


def public_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON form of `FeatureIndex.metadata` for one id (everything but vectors)."""
    meta = meta or {}
    return {
        "path": text_of(meta.get("path")), "box": floats(meta.get("box")), "label": text_of(meta.get("label")),
        "detector_score": score_of(meta.get("score")),  # "score" is the similarity in results
        "width": int_of(meta.get("width")), "height": int_of(meta.get("height")), "crop": text_of(meta.get("crop")),
    }


def absent(value: Any) -> bool:
    """None, NaN or pandas' NA (groups files hold nullable integer columns)."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN; NA compares to NA, and bool(NA) raises
    except TypeError:
        return True


def int_of(value: Any) -> int | None:
    return None if absent(value) else int(value)


def text_of(value: Any) -> str | None:
    return None if absent(value) else str(value)
