"""Reviewers' verdicts on duplicate groups: a JSON Lines file the next `imgfeat dedup` respects.

One record per verdict: {"ids": [sorted ids], "verdict": "not-duplicate", "at": "2024-05-01T12:00:00Z"}.
`imgfeat dedup` drops every pair (a, b) whose ids are together in a "not-duplicate" record; a
later "duplicate" record on the same set cancels it. Writers (the HTML report's lines pasted by
hand, `POST /reviews`, `save_review`) may run at once: each save takes a lock, rewrites the
file under a temporary name and renames it, so a kill or a full disk never leaves half a line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ConfigError
from ..storage import atomic_write

VERDICTS = ("not-duplicate", "duplicate")
REVIEWS_FILE = "reviews.jsonl"


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock shared by every process saving reviews to `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_writable(reviews_path: str | os.PathLike) -> None:
    """Raise OSError now if reviews cannot be saved at `reviews_path` (folder and lock file)."""
    path = os.path.abspath(os.fspath(reviews_path))
    with _locked(path):
        if os.path.exists(path) and not os.access(path, os.R_OK):
            raise PermissionError(f"cannot read {path}")
        atomic_write(os.path.join(os.path.dirname(path), ".reviews-write-check"), b"")
        os.remove(os.path.join(os.path.dirname(path), ".reviews-write-check"))


def save_review(reviews_path: str | os.PathLike, ids: Iterable[str], verdict: str = "not-duplicate") -> dict[str, Any]:
    """Append a reviewer's verdict on a set of ids to the reviews file.

    Args:
        reviews_path: the JSON Lines file (created with its folder when missing).
        ids: two or more ids judged together.
        verdict: "not-duplicate" (the next dedup drops their pairs) or "duplicate" (recorded only).

    Returns:
        The record written: {"ids": sorted ids, "verdict": ..., "at": ISO time}.

    Raises:
        ConfigError: fewer than two distinct ids, or an unknown verdict.
    """
    unique = sorted({str(i) for i in ids})
    if len(unique) < 2:
        raise ConfigError(f"a review needs at least two distinct ids, got {unique}")
    if verdict not in VERDICTS:
        raise ConfigError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    record = {"ids": unique, "verdict": verdict, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    reviews_path = os.path.abspath(os.fspath(reviews_path))
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with _locked(reviews_path):
        try:
            with open(reviews_path, "rb") as fh:
                existing = fh.read()
        except FileNotFoundError:
            existing = b""
        if existing and not existing.endswith(b"\n"):
            existing = existing[:existing.rfind(b"\n") + 1]  # drop a line cut short by a crash
        # the whole file rewritten under a new name and renamed: a kill or a full disk leaves
        # the previous file whole, never a truncated line
        atomic_write(reviews_path, existing + line)
    return record


def load_reviews(reviews_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a reviews file, oldest first ([] when the file does not exist).

    A last line without its newline (a write cut short) is ignored.

    Raises:
        ConfigError: a complete line is not a review record (the message names the line).
    """
    reviews_path = os.fspath(reviews_path)
    if not os.path.exists(reviews_path):
        return []
    with open(reviews_path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is "" or a cut-short write
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{reviews_path} line {number} is not JSON ({exc}): fix or delete that line") from exc
        if not isinstance(record, dict) or not isinstance(record.get("ids"), list):
            raise ConfigError(f"{reviews_path} line {number} is not a review record "
                              '({"ids": [...], "verdict": ...}): fix or delete that line')
        records.append(record)
    return records


def not_duplicate_sets(reviews: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The id sets of "not-duplicate" records (a later "duplicate" on the same set cancels it)."""
    latest: dict[frozenset, str] = {}
    for record in reviews:
        latest[frozenset(str(i) for i in record["ids"])] = record.get("verdict", "not-duplicate")
    return [sorted(ids) for ids, verdict in latest.items() if verdict == "not-duplicate"]




def default_reviews_path(groups_path: str | os.PathLike) -> str:
    """reviews.jsonl beside the groups file."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(groups_path))), REVIEWS_FILE)
