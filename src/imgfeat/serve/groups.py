"""The duplicates view behind /groups and /reviews: groups from `imgfeat dedup`, verdicts in reviews.jsonl.

    groups = DuplicateGroups(index, "groups.parquet")        # reviews.jsonl beside it
    groups.page(0, 20)                                        # {"total", "groups": [...]}
    groups.review(["a", "b"], "not-duplicate")                # appended; the next dedup respects it

The reviews file is checked for writing at start-up: when it cannot be written the groups stay
viewable and `review` answers 503 with the reason (`reviews_problem`), never a server crash.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import ConfigError
from .responses import RequestError, public_metadata, score_of


class DuplicateGroups:
    """Duplicate groups with their review verdicts.

    Args:
        index: the loaded FeatureIndex the groups were found in (member metadata comes from it).
        groups_path: the groups Parquet written by `imgfeat dedup` (None: no duplicates view).
        reviews_path: where verdicts go; None: reviews.jsonl beside `groups_path`.

    Raises:
        ConfigError: the groups file cannot be read or lacks the dedup columns.
    """

    def __init__(self, index: Any, groups_path: str | os.PathLike | None = None,
                 reviews_path: str | os.PathLike | None = None):
        from ..retrieval.reviews import default_reviews_path

        self.index = index
        self.groups_path = os.fspath(groups_path) if groups_path is not None else None
        if reviews_path is None and self.groups_path is not None:
            reviews_path = default_reviews_path(self.groups_path)  # where `imgfeat dedup` looks
        self.reviews_path = os.fspath(reviews_path) if reviews_path is not None else None
        self.groups = _load_groups(self.groups_path) if self.groups_path else []
        self._lock = threading.Lock()
        self.reviews_problem = self._check_reviews()

    def _check_reviews(self) -> str | None:
        """Why reviews cannot be saved (None when they can, or when there is no reviews file)."""
        from ..retrieval.reviews import check_writable

        if self.reviews_path is None:
            return None
        try:
            check_writable(self.reviews_path)
        except OSError as exc:
            return f"cannot write reviews to {self.reviews_path}: {exc.strerror or exc}"
        return None

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        """A page of duplicate groups, each marked with its review verdict (or None).

        Members carry `score` (cosine to the representative) and, from the index, their
        `detector_score`, `crop`, `box` and `label`.

        Raises:
            RequestError: 404 when the service was started without a groups file.
        """
        if self.groups_path is None:
            raise RequestError(404, "no-groups", "start the service with --groups GROUPS.parquet "
                                                 "(written by `imgfeat dedup`) to review duplicates")
        reviewed = self._reviewed()
        groups = self.groups[offset:offset + limit]
        ids = list(dict.fromkeys(item["id"] for group in groups for item in group["items"]))
        metadata = dict(zip(ids, self.index.metadata(ids))) if ids else {}
        page = []
        for group in groups:
            items = [{**item, **_indexed(metadata.get(item["id"])), "id": item["id"], "score": item["score"]}
                     for item in group["items"]]
            page.append({"group": group["group"], "items": items,
                         "verdict": reviewed.get(frozenset(item["id"] for item in items))})
        return {"total": len(self.groups), "offset": offset, "limit": limit, "groups": page}

    def review(self, ids: list[str], verdict: str) -> dict[str, Any]:
        """Store a reviewer's verdict on a set of ids (respected by the next `imgfeat dedup`).

        Raises:
            RequestError: 404 without a reviews file; 422 for fewer than two distinct ids or ids
                not in the index; 503 when the reviews file cannot be written.
        """
        from ..retrieval.reviews import save_review

        if self.reviews_path is None:
            raise RequestError(404, "no-reviews", "start the service with --groups (or --reviews) "
                                                  "to store duplicate reviews")
        unique = sorted(set(ids))
        if len(unique) < 2:
            raise RequestError(422, "invalid-review", "a review needs at least two distinct ids")
        unknown = [item_id for item_id in unique if not self.index.contains(item_id)]
        if unknown:
            raise RequestError(422, "unknown-id", f"not in the index: {', '.join(unknown[:5])}")
        if self.reviews_problem is not None:
            raise RequestError(503, "reviews-unwritable", f"{self.reviews_problem}; restart the service "
                                                          f"with --reviews PATH on a writable disk")
        try:
            with self._lock:
                save_review(self.reviews_path, unique, verdict=verdict)
        except OSError as exc:  # e.g. the disk filled up since start-up: the old file is intact
            raise RequestError(503, "reviews-unwritable", f"cannot write reviews to {self.reviews_path}: "
                                                          f"{exc.strerror or exc}; nothing was lost") from exc
        return {"ids": unique, "verdict": verdict}

    def _reviewed(self) -> dict[frozenset, str]:
        from ..retrieval.reviews import load_reviews

        if self.reviews_path is None or not os.path.exists(self.reviews_path):
            return {}
        try:
            with self._lock:
                reviews = load_reviews(self.reviews_path)
        except OSError as exc:
            raise RequestError(503, "reviews-unreadable", f"cannot read {self.reviews_path}: "
                                                          f"{exc.strerror or exc}") from exc
        latest: dict[frozenset, str] = {}
        for record in reviews:
            latest[frozenset(str(i) for i in record["ids"])] = record.get("verdict", "not-duplicate")
        return latest


def _indexed(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The index's metadata of a group member, without its path (the groups file has it)."""
    if meta is None:  # a groups file from another index: keep what the groups file says
        return {}
    return {key: value for key, value in public_metadata(meta).items() if key != "path"}


def _load_groups(path: str) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the groups file {path}: {exc}; write it with `imgfeat dedup`") from exc
    needed = {"group", "id", "path"}
    if not needed <= set(frame.columns):
        raise ConfigError(f"{path} lacks columns {sorted(needed - set(frame.columns))}: "
                          f"not a groups file written by `imgfeat dedup`")
    groups = []
    for group_id, members in frame.groupby("group", sort=True):
        if "is_representative" in members:
            members = members.sort_values("is_representative", ascending=False, kind="stable")
        items = []
        for row in members.to_dict("records"):
            # the groups file's "score" is the cosine to the representative, not the detector's
            meta = {key: value for key, value in row.items() if key != "score"}
            items.append({"id": str(row["id"]), "is_representative": bool(row.get("is_representative", False)),
                          "score": score_of(row.get("score")), **public_metadata(meta)})
        groups.append({"group": group_id.item() if hasattr(group_id, "item") else group_id, "items": items})
    return groups
