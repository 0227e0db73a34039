"""The runs of an output: which inputs each run added, into which shards (pure functions).

An output grows by runs. Each run takes the inputs of the listing whose ids are not in the
output yet ("added"), in listing order, and cuts them into new shards numbered after every
shard planned before. Its manifest entry is written before any of its shards:

    {"run": 2, "first_shard": 10, "num_shards": 3, "added": 2500, "added_sha256": "...",
     "inputs": 102500, "started": "...", "finished": null, "engine": null, ...}

A rerun finds the last run unfinished when one of its shards is missing (a kill). If the
inputs it would add now (the listing minus the ids of the earlier runs' shards) have the
recorded fingerprint, the run is resumed: the same inputs cut into the same shards, only the
missing ones computed, so a shard written by the killed run and its rewrite by the rerun hold
the same ids. If the source changed in between, the run is closed as it stands: its missing
shards are recorded as `abandoned` (never written under that name again) and the inputs they
held are added by a new run. Either way each id lands in exactly one shard.

The first run is the special case with no earlier shards: its "added" is the whole listing, so
its fingerprint is the listing's (`inputs_sha256`), as in outputs made before runs existed.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .sources import Item


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def recorded_runs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's runs; an output made before runs were recorded is one run of all shards."""
    if manifest.get("runs") is not None:
        return [dict(run) for run in manifest["runs"]]
    if not manifest.get("num_shards") and not manifest.get("shards"):
        return []
    return [{"run": 1, "first_shard": 0, "num_shards": int(manifest.get("num_shards") or 0),
             "added": manifest.get("inputs"), "added_sha256": manifest.get("inputs_sha256"),
             "inputs": manifest.get("inputs"), "started": manifest.get("created"),
             "finished": None, "engine": (manifest.get("last_run") or {}).get("engine")}]


def run_shard_indexes(run: dict[str, Any]) -> list[int]:
    """The shards a run planned and did not abandon."""
    abandoned = set(run.get("abandoned") or [])
    return [i for i in range(run["first_shard"], run["first_shard"] + run["num_shards"])
            if i not in abandoned]


def expected_shards(runs: Sequence[dict[str, Any]]) -> list[int]:
    """Every shard the output should hold, over all runs."""
    return [i for run in runs for i in run_shard_indexes(run)]


def next_shard(runs: Sequence[dict[str, Any]], written: Sequence[int]) -> int:
    """The first shard number no run planned and no file uses (abandoned numbers stay used)."""
    planned = [run["first_shard"] + run["num_shards"] for run in runs]
    return max([0, *planned, *(i + 1 for i in written)])


def added_items(items: Sequence[Item], present: set[str]) -> list[Item]:
    """The inputs whose ids are not in the output, in listing order."""
    return [item for item in items if item.id not in present] if present else list(items)


def new_run(runs: Sequence[dict[str, Any]], first_shard: int, num_shards: int, added: int,
            added_sha256: str, inputs: int) -> dict[str, Any]:
    return {"run": (runs[-1]["run"] + 1) if runs else 1, "first_shard": first_shard,
            "num_shards": num_shards, "added": added, "added_sha256": added_sha256, "inputs": inputs,
            "started": now(), "finished": None, "engine": None}
