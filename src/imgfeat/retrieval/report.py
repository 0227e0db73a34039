"""A single-file HTML report of near-duplicate groups, with thumbnails people can look at.

    write_report(groups, "report.html")   # groups: the DataFrame find_duplicates returns

Each member is shown as a small JPEG of the crop that was compared (its box), embedded as
base64, so the file opens anywhere without the images beside it. The largest groups come
first; at most `max_groups` are shown (the page says how many were left out; all are in the
groups Parquet). A "not duplicates" box per group builds reviews.jsonl lines to download.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

from ..storage import atomic_write
from ..thumbs import ThumbnailError, placeholder, thumbnail_of

THUMB_SIDE = 160
MAX_GROUPS = 200


def thumbnail(path: str, box: Any = None, side: int = THUMB_SIDE) -> tuple[bytes, str | None]:
    """A JPEG thumbnail of `box` in the image at `path`, or a placeholder and the reason."""
    try:
        return thumbnail_of(path, box, side), None
    except ThumbnailError as exc:
        return placeholder(side), str(exc)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} .note{color:#555}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}
section h2{font-size:1em;margin:.2em 0 .6em}
.members{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:%(side)dpx;font-size:11px;word-break:break-all}
figure img{width:%(side)dpx;height:%(side)dpx;object-fit:contain;background:#eee;border:3px solid transparent}
figure.rep img{border-color:#2a7}
.bad{color:#b00} label.review{font-size:12px;margin-left:1em}
textarea{width:100%%;height:6em;font-family:monospace;font-size:11px}
"""

_SCRIPT = """
function updateReviews(){
  const lines=[...document.querySelectorAll('input.review:checked')].map(box=>JSON.stringify(
    {ids:JSON.parse(box.dataset.ids),verdict:'not-duplicate',at:new Date().toISOString().slice(0,19)+'Z'}));
  const text=lines.join('\\n')+(lines.length?'\\n':'');
  document.getElementById('reviews').value=text;
  const link=document.getElementById('download');
  link.href='data:application/x-ndjson;charset=utf-8,'+encodeURIComponent(text);
}
document.querySelectorAll('input.review').forEach(box=>box.addEventListener('change',updateReviews));
"""


def render_report(groups: Any, *, max_groups: int = MAX_GROUPS, side: int = THUMB_SIDE,
                  title: str = "Near-duplicate groups", stats: dict[str, Any] | None = None) -> str:
    """The HTML text of the report (see `write_report`)."""
    esc = html.escape
    total_groups = int(groups["group"].nunique()) if len(groups) else 0
    shown_groups = sorted(groups["group"].unique())[:max_groups] if len(groups) else []
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE % {'side': side}}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    summary = f"{total_groups} groups, {len(groups)} images in groups."
    if stats:
        summary += (f" {stats.get('vectors', '?')} images compared at cosine similarity >= "
                    f"{stats.get('threshold', '?')}; {stats.get('pairs', '?')} pairs")
        if stats.get("pairs_dropped_by_reviews"):
            summary += f", {stats['pairs_dropped_by_reviews']} dropped by earlier reviews"
        summary += "."
    parts.append(f"<p class='note'>{esc(summary)} The green border marks each group's representative; "
                 "the number under each image is its similarity to it.</p>")
    if total_groups > len(shown_groups):
        parts.append(f"<p class='note'><b>Showing the {len(shown_groups)} largest of {total_groups} groups</b>; "
                     "every group is in the groups Parquet file (rerun with a larger --max-groups to see more).</p>")
    by_group = {g: frame for g, frame in groups.groupby("group", sort=True)} if len(groups) else {}
    for group in shown_groups:
        members = by_group[group]
        ids = sorted(str(i) for i in members["id"])
        parts.append(f"<section id='g{int(group)}'><h2>Group {int(group)} &middot; {len(members)} images"
                     f"<label class='review'><input type='checkbox' class='review' "
                     f"data-ids='{esc(json.dumps(ids))}'> not duplicates</label></h2><div class='members'>")
        for row in members.to_dict("records"):
            jpeg, problem = thumbnail(str(row["path"]), row.get("box"), side)
            data = base64.b64encode(jpeg).decode("ascii")
            rep = bool(row.get("is_representative"))
            score = row.get("score")
            caption = "representative" if rep else (f"{float(score):.3f}" if score is not None else "")
            name = os.path.basename(str(row["path"]))
            parts.append(
                f"<figure class='{'rep' if rep else ''}'><img src='data:image/jpeg;base64,{data}' "
                f"alt='{esc(name)}' title='{esc(str(row['path']))}'>"
                f"<figcaption><b>{esc(caption)}</b><br>{esc(name)}<br><code>{esc(str(row['id']))}</code>"
                + (f"<br><span class='bad'>{esc(problem)}</span>" if problem else "")
                + "</figcaption></figure>")
        parts.append("</div></section>")
    if shown_groups:
        parts.append("<h2>Reviews</h2><p class='note'>Tick \"not duplicates\" on groups that are wrong, then "
                     "append these lines to reviews.jsonl (beside the groups file); the next "
                     "<code>imgfeat dedup</code> keeps their images apart.</p>"
                     "<textarea id='reviews' readonly></textarea>"
                     "<p><a id='download' download='reviews.jsonl' href='#'>download these lines</a></p>"
                     f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(groups: Any, path: str | os.PathLike, *, max_groups: int = MAX_GROUPS,
                 side: int = THUMB_SIDE, title: str = "Near-duplicate groups",
                 stats: dict[str, Any] | None = None) -> int:
    """Write the HTML report of duplicate groups to `path`.

    Args:
        groups: the DataFrame from `find_duplicates` (or read from groups.parquet).
        path: the .html file to write.
        max_groups: show at most this many groups (the largest); the page notes the rest.
        side: thumbnail size in pixels.
        stats: `groups.attrs["stats"]`, shown in the summary line.

    Returns:
        The number of groups shown.
    """
    text = render_report(groups, max_groups=max_groups, side=side, title=title,
                         stats=stats if stats is not None else groups.attrs.get("stats"))
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, text.encode("utf-8"))
    return min(max_groups, int(groups["group"].nunique()) if len(groups) else 0)
