"""The near-duplicate benchmark's report: the issue's targets checked against the results, and
the results as a text table (evaluate.run_neardup builds the report; this module only reads it)."""

from __future__ import annotations

from typing import Any

from .neardup_data import PERCEPTUAL

CODE_METHODS = ("rproj", "itq", "deepbit")


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's quality targets, each with the numbers compared and whether it is met."""
    targets: list[dict[str, Any]] = []
    perceptual = {k: v for k, v in results.items() if k in PERCEPTUAL}
    floats = results.get("float")
    if floats and perceptual:
        for metric in ("top1", "map"):
            best = max(perceptual, key=lambda k: perceptual[k][metric])
            targets.append({"target": f"float beats the best perceptual hash on {metric}",
                            "value": floats[metric], "versus": f"{best} {perceptual[best][metric]:.3f}",
                            "met": floats[metric] > perceptual[best][metric]})
    if floats:
        for key, result in results.items():
            if key.endswith("-256") and key.split("-")[0] in CODE_METHODS and not key.startswith("rproj"):
                gap = floats["map"] - result["map"]
                targets.append({"target": f"{key} mAP within 3 points of float",
                                "value": result["map"], "versus": f"float {floats['map']:.3f} (gap {100 * gap:.1f} points)",
                                "met": gap <= 0.03})
    if perceptual:
        best_top1 = max(v["top1"] for v in perceptual.values())
        best_map = max(v["map"] for v in perceptual.values())
        for key, result in results.items():
            if key.endswith("-64") and key.split("-")[0] in CODE_METHODS:
                targets.append({"target": f"{key} beats every 64-bit perceptual hash (top-1 and mAP)",
                                "value": f"top1 {result['top1']:.3f}, mAP {result['map']:.3f}",
                                "versus": f"best perceptual top1 {best_top1:.3f}, mAP {best_map:.3f}",
                                "met": result["top1"] > best_top1 and result["map"] > best_map})
    return targets


def check_larger_targets(results: dict[str, dict[str, Any]], same_object: dict[str, Any] | None,
                         whole: str | None, objects: str | None, object_sets: int = 0) -> list[dict[str, Any]]:
    """The larger evaluation's targets (issue 13 item 4), each with its numbers and whether it is met.

    Args:
        results: run_neardup's results.
        same_object: run_same_object's report, or None.
        whole: key prefix of the whole-image vector's results ("image/", or "" when detection is
            off), None when not scored.
        objects: key prefix of the object vector's results, None when not scored (or detection off).
        object_sets: K of the object sets' results (0: not scored); the targets are checked on
            all K objects, with each reduction.
    """
    targets: list[dict[str, Any]] = []
    floats = results.get(f"{whole}float") if whole is not None else None
    if floats:
        for metric, goal in (("top1", 0.99), ("map", 0.995)):
            targets.append({"target": f"whole-image float {metric} >= {goal}", "value": floats[metric],
                            "versus": str(goal), "met": floats[metric] >= goal})
        for method in CODE_METHODS:
            code = results.get(f"{whole}{method}-256")
            if code:
                gap = floats["map"] - code["map"]
                targets.append({"target": f"whole-image {method}-256 mAP within 0.01 of the float",
                                "value": code["map"], "versus": f"float {floats['map']:.3f} (gap {gap:.3f})",
                                "met": gap <= 0.01})
        by_transform = floats["top1_by_transform"]
        worst = min(by_transform, key=by_transform.get)
        targets.append({"target": "whole-image float top-1 >= 0.95 on every transform", "value": by_transform[worst],
                        "versus": f"worst: {worst}", "met": by_transform[worst] >= 0.95})
    if objects is not None and f"{objects}float" in results:
        top1 = results[f"{objects}float"]["top1"]
        targets.append({"target": "object float top-1 >= 0.97", "value": top1, "versus": "0.97", "met": top1 >= 0.97})
    for reduction in ("max", "chamfer") if object_sets else ():
        key = f"objects{object_sets}-{reduction}/float"
        top1 = results[key]["top1"]
        targets.append({"target": f"{key} (the object sets) top-1 >= 0.97", "value": top1, "versus": "0.97",
                        "met": top1 >= 0.97})
    if same_object:
        task = same_object["results"]
        contenders = [("object float", "float")] + [(f"{k} (object sets)", k) for k in
                                              (f"objects{object_sets}-{r}/float" for r in ("max", "chamfer"))
                                              if object_sets and k in task]
        for name, key in contenders:
            for metric in ("top1", "map"):
                targets.append({"target": f"same-object task: {name} beats whole-image float on {metric}",
                                "value": task[key][metric], "versus": f"whole image {task['image/float'][metric]:.3f}",
                                "met": task[key][metric] > task["image/float"][metric]})
    return targets


def format_table(report: dict[str, Any]) -> str:
    """The results as a fixed-width text table, then the targets."""
    header = (f"{'method':<24}{'bits':>6}{'top-1':>8}{'mAP':>8}{'thr':>7}{'prec':>7}{'recall':>8}{'bestF1':>8}"
              f"{'@thr':>7}")
    lines = [header, "-" * len(header)]
    for name, result in report["results"].items():
        lines.append(
            f"{name:<24}{result['bits']:>6}{result['top1']:>8.3f}{result['map']:>8.3f}"
            f"{result['threshold']:>7.3f}{result['at_threshold_precision']:>7.3f}"
            f"{result['at_threshold_recall']:>8.3f}{result['best_f1']['f1']:>8.3f}"
            f"{result['best_f1']['threshold']:>7.3f}")
    for key, why in report.get("skipped", {}).items():
        lines.append(f"{key:<24} skipped: {why}")
    if "same_object" in report:
        task = report["same_object"]
        lines += ["", f"same-object task ({task['counts']['objects']} objects x "
                      f"{task['counts']['pastes'] // task['counts']['objects']} pastes, "
                      f"{task['counts']['backgrounds']} backgrounds)",
                  f"{'method':<24}{'bits':>6}{'top-1':>8}{'mAP':>8}"]
        for name, result in task["results"].items():
            lines.append(f"{name:<24}{result['bits']:>6}{result['top1']:>8.3f}{result['map']:>8.3f}")
    lines.append("")
    for target in report.get("targets", []):
        value = target["value"] if isinstance(target["value"], str) else f"{target['value']:.3f}"
        lines.append(f"[{'met' if target['met'] else 'NOT met'}] {target['target']}: {value} vs {target['versus']}")
    return "\n".join(lines)
