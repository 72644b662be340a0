"""A short plain-text summary of a run: Deep Standard vs Deep Optimal per task."""

from __future__ import annotations

from pathlib import Path

from transferlab.evaluate import error_of, higher_is_better
from transferlab.study.results import ResultStore

SHOWN_FACTORS = ("layer", "pooling", "normalisation", "pca", "views", "finetune", "qe")


def summary_table(run_dir: str | Path) -> str:
    store = ResultStore(run_dir, create=False)
    rows = store.rows()
    tasks = store.get_meta("tasks", {}) or {}
    sources = store.get_meta("sources", []) or []
    standard_setting = store.get_meta("standard", {}) or {}
    order = sorted({r["task"] for r in rows}, key=lambda t: (tasks.get(t, {}).get("distance", 999), t))
    lines = [f"{'task':<18} {'metric':<20} {'standard':>9} {'optimal':>9} {'err. red.':>9}  best configuration"]
    for task in order:
        task_rows = [r for r in rows if r["task"] == task]
        metric = task_rows[0]["metric"]
        sign = 1 if higher_is_better(metric) else -1
        standard = next((r for r in task_rows if r["standard"]), None)
        if standard is None and sources:
            standard = next((r for r in task_rows if r["source"] == sources[0]
                             and all(r["factors"].get(k) == v for k, v in standard_setting.items()
                                     if k in r["factors"])), None)
        best = max(task_rows, key=lambda r: sign * r["value"])
        reduction = ""
        if standard is not None:
            e_std, e_opt = error_of(metric, standard["value"]), error_of(metric, best["value"])
            reduction = f"{(e_std - e_opt) / e_std:>8.0%}" if e_std > 0 else "     n/a"
        changed = [f"{k}={best['factors'][k]}" for k in SHOWN_FACTORS
                   if k in best["factors"] and best["factors"][k] != standard_setting.get(k)]
        config = ", ".join([best["source"]] + changed)
        std_text = f"{standard['value']:>9.3f}" if standard else f"{'-':>9}"
        lines.append(f"{task:<18} {metric:<20} {std_text} {best['value']:>9.3f} {reduction:>9}  {config}")
    return "\n".join(lines)
