"""A short plain-text summary of a run: Deep Standard vs Deep Optimal per task, from the
same summaries the HTML report tabulates (report.tables.summarise)."""

from __future__ import annotations

from pathlib import Path

from transferlab.study.plan import FACTOR_NAMES
from transferlab.study.results import ResultStore


def summary_table(run_dir: str | Path) -> str:
    from transferlab.report.html import fmt_reduction, fmt_value
    from transferlab.report.tables import summarise, task_infos

    with ResultStore(run_dir, create=False) as store:
        rows, meta = store.rows(), store.meta()
    standard_setting = meta.get("standard", {}) or {}
    lines = [f"{'task':<18} {'metric':<20} {'standard':>9} {'optimal':>9} {'err. red.':>9}  best configuration"]
    for summary in summarise(rows, task_infos(rows, meta)) if rows else []:
        best, standard = summary.optimal, summary.standard
        config = "-"
        if best is not None:
            changed = [f"{k}={best['factors'][k]}" for k in FACTOR_NAMES
                       if k in best["factors"] and best["factors"][k] != standard_setting.get(k)]
            config = ", ".join([best["source"]] + changed)
        lines.append(
            f"{summary.task.name:<18} {summary.metric:<20} "
            f"{fmt_value(summary.metric, standard['value'] if standard else None):>9} "
            f"{fmt_value(summary.metric, best['value'] if best else None):>9} "
            f"{fmt_reduction(summary.error_reduction):>9}  {config}")
    return "\n".join(lines)
