"""A run's answer per task: Deep Standard, Deep Optimal (chosen on validation) and the oracle
(best on test), each with its 95% interval, and the paired interval of optimal - standard.

The same summaries the HTML report tabulates (report.tables.summarise), as plain text
(`transferlab demo`, `study`) or as JSON (`transferlab results RUN_DIR --summary --json`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transferlab.results.factors import setting_factors
from transferlab.results.store import ResultStore


def _summaries(run_dir: str | Path, current: bool = True):
    from transferlab.report.tables import summarise, task_infos

    with ResultStore(run_dir, create=False) as store:
        rows = store.current_rows() if current else store.rows()
        meta = store.meta()
        items = store.items([r["job_key"] for r in rows])
    return (summarise(rows, task_infos(rows, meta), items) if rows else []), meta


def summary_table(run_dir: str | Path) -> str:
    from transferlab.report.formatting import fmt_difference, fmt_row
    from transferlab.report.html import too_small

    summaries, meta = _summaries(run_dir)
    standard_setting = meta.get("standard", {}) or {}
    lines = [f"{'task':<18} {'metric':<20} {'Deep Standard':>22} {'Deep Optimal (val)':>22}  "
             "optimal - standard      best configuration on validation"]
    small = []
    for summary in summaries:
        best, standard = summary.optimal, summary.standard
        config = "-" if best is not None else f"none ({summary.no_selection})"
        if best is not None:
            changed = [f"{k}={best['factors'][k]}" for k in (f.name for f in setting_factors())
                       if k in best["factors"] and best["factors"][k] != standard_setting.get(k)]
            config = ", ".join([best["source"]] + changed)
        if too_small(summary):
            small.append(summary.task.name)
        diff = fmt_difference(summary.metric, summary.difference)
        if best is not None and best is standard:
            diff, config = "- (is Deep Standard)", f"{best['source']} (the standard configuration)"
        lines.append(
            f"{summary.task.name:<18} {summary.metric:<20} {fmt_row(summary.metric, standard):>22} "
            f"{fmt_row(summary.metric, best):>22}  {diff:<22}  {config}")
    lines.append("values: test metric [95% bootstrap interval]; Deep Optimal is chosen on validation data")
    if small:
        lines.append(f"test sets too small to tell configurations apart (paired interval wider than ±5 points, "
                     f"containing 0): {', '.join(small)}")
    return "\n".join(lines)


def summary_json(run_dir: str | Path, current: bool = True) -> list[dict[str, Any]]:
    """Per task: metric; standard / optimal / oracle, each with its configuration, test value,
    interval (low, high), validation value and selection protocol; difference (optimal -
    standard) with its paired interval and whether it is measurable."""
    from transferlab.report.tables import config_of

    summaries, _ = _summaries(run_dir, current)

    def num(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def entry(row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {"configuration": config_of(row), "job_key": row["job_key"], "value": num(row["value"]),
                "low": num(row.get("low")), "high": num(row.get("high")), "val_value": num(row.get("val_value")),
                "selection": row.get("selection") or ""}

    out = []
    for s in summaries:
        item: dict[str, Any] = {
            "task": s.task.name, "metric": s.metric, "rows": len(s.rows),
            "standard": entry(s.standard), "optimal": entry(s.optimal),
            "oracle": {**(entry(s.oracle) or {}), "label": "oracle: best on test, as the paper reported"}
            if s.oracle is not None else None,
            "difference": s.difference.to_dict() if s.difference is not None else None,
            "error_reduction": num(s.error_reduction),
        }
        if s.optimal is None:
            item["no_selection"] = s.no_selection
        if s.repeats:
            item["repeats"] = s.repeats
        out.append(item)
    return out
