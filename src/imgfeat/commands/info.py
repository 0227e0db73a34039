"""`imgfeat info`: rows, errors by kind, schema and models of a feature dataset."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a feature dataset: rows, errors, schema, models")
    p.add_argument("output", help="the folder written by `imgfeat extract`")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    from ..api import info

    summary = info(args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = summary["status"]
    print(f"{summary['output']}: {summary['rows']} rows in {summary['shards']}/{summary['shards_expected']} "
          f"shards ({'complete' if summary['complete'] else 'INCOMPLETE: rerun extract to resume'})")
    print(f"  ok {status.get('ok', 0)}, error {status.get('error', 0)}")
    for kind, count in sorted(summary["errors"].items(), key=lambda kv: -kv[1]):
        print(f"    {kind}: {count}")
    models = summary.get("models") or {}
    digests = summary.get("model_digests") or {}
    print("  models: " + ", ".join(f"{k} {v}" + (f" ({digests[k]})" if digests.get(k) else "")
                                   for k, v in models.items()))
    print("  schema:")
    for field in summary.get("schema") or []:
        print(f"    {field}")
    return 0


