"""The numbers behind the report, computed from ResultStore rows only (no HTML, no plots).

A row's *configuration* is its source plus its factor values, minus descriptive keys such as
``layer_name`` that only name another factor's value. Tasks are ordered by their distance
from the source task (the paper's ordering); every comparison uses the task's own metric.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.results.factors import (
    descriptive_factors,
    learning_factors,
    ordered_factors,
    sorts_from_top,
)

# Factor titles, the keys that only describe a row (``layer_name``, ``sweep``), the learning
# factors and every reading order come from results.factors' table.


@dataclass(frozen=True)
class TaskInfo:
    """Where a task sits in the ordering, and how its numbers are measured."""

    name: str
    distance: float
    group: int
    group_name: str
    metric: str
    protocol: str = ""
    title: str = ""


@dataclass
class TaskSummary:
    """Deep Standard vs Deep Optimal for one task."""

    task: TaskInfo
    metric: str
    rows: list[dict[str, Any]]
    standard: dict[str, Any] | None
    optimal: dict[str, Any] | None
    error_reduction: float | None
    ignored: int = 0  # rows of this task measured with another metric
    several_standard: bool = False
    oracle: dict[str, Any] | None = None  # best on test, as the paper reported (never the headline)
    difference: Any = None  # intervals.Difference of optimal - standard (paired), when replicates exist
    no_selection: str = ""  # why no row could be chosen on validation
    repeats: dict[str, Any] | None = None  # mean/std of standard and optimal over execution.repeats splits


@dataclass
class FactorCell:
    value: float
    relative: float | None
    row: dict[str, Any]
    candidates: int  # rows this cell was chosen from (1 in a clean standard slice)


@dataclass
class FactorTable:
    """Metric per value of one factor per task, with the rule used to fix the other factors."""

    factor: str
    values: list[Any]
    cells: dict[tuple[str, str], FactorCell] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # task -> "standard" | "best"
    references: dict[str, str] = field(default_factory=dict)  # task -> "standard" | "optimal"
    standard_values: dict[str, Any] = field(default_factory=dict)  # task -> standard's value

    # Factors the standard configuration lacks that still varied inside a standard-mode cell
    # (e.g. the snapshot of a trained source along "width"): the best over them is shown.
    free_factors: set[str] = field(default_factory=set)

    def cell(self, task: str, value: Any) -> FactorCell | None:
        return self.cells.get((task, value_key(value)))


# --------------------------------------------------------------------------- helpers


def value_key(value: Any) -> str:
    """Hashable identity of a JSON factor value (lists and dicts included)."""
    return json.dumps(value, sort_keys=True)


def value_label(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def value_order(factor: str, values: Iterable[Any]) -> list[Any]:
    """Distinct values in reading order: numbers ascending (a factor the table sorts from the
    top, the layer: -1, -2, ...), then text alphabetically."""
    unique = {value_key(v): v for v in values}
    from_top = sorts_from_top(factor)

    def key(v: Any) -> tuple:
        if isinstance(v, bool) or v is None:
            return (0, float(bool(v)), "")
        if isinstance(v, (int, float)):
            number = float(v)
            return (1, -number if from_top and number < 0 else number, "")
        return (2, 0.0, value_label(v))

    return sorted(unique.values(), key=key)


def higher_better(metric: str) -> bool:
    from transferlab.evaluate import higher_is_better

    try:
        return higher_is_better(metric)
    except TransferlabError:
        return True


def error_of(metric: str, value: float) -> float | None:
    """The error behind a score (see transferlab.evaluate.error_of); None for unknown metrics."""
    from transferlab.evaluate import error_of as _error_of

    try:
        return _error_of(metric, value)
    except TransferlabError:
        return None


def error_reduction(metric: str, standard: float, optimal: float) -> float | None:
    """``(err_std - err_opt) / err_std``; None when the standard has no error or it is unknown."""
    err_std, err_opt = error_of(metric, standard), error_of(metric, optimal)
    if err_std is None or err_opt is None or not math.isfinite(err_std) or not math.isfinite(err_opt):
        return None
    if err_std <= 0:
        return None
    return (err_std - err_opt) / err_std


def config_of(row: dict[str, Any]) -> dict[str, Any]:
    """Source plus factor values, without descriptive keys."""
    config = {"source": row["source"]}
    descriptive = descriptive_factors()
    config.update({k: v for k, v in row["factors"].items() if k not in descriptive})
    return config


def factor_values(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every factor (source included) with its distinct values, in reading order."""
    seen: dict[str, list[Any]] = {}
    for row in rows:
        for name, value in config_of(row).items():
            seen.setdefault(name, []).append(value)
    return {name: value_order(name, seen[name]) for name in ordered_factors(seen)}


def varying_factors(rows: list[dict[str, Any]]) -> list[str]:
    return [name for name, values in factor_values(rows).items() if len(values) > 1]


def fixed_factors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Factors with one value in the whole study (in the rows that have them, e.g. ``qe``
    only in retrieval rows)."""
    return {name: values[0] for name, values in factor_values(rows).items() if len(values) == 1}


def is_better(metric: str, a: float, b: float) -> bool:
    """Is score ``a`` strictly better than ``b``? NaN is never better."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if higher_better(metric) else a < b


def has_validation(row: dict[str, Any]) -> bool:
    """Did the row get a validation score it may be selected by?"""
    value = row.get("val_value")
    return (isinstance(value, (int, float)) and math.isfinite(value)
            and not str(row.get("selection") or "").startswith("none"))


def changes_from(row: dict[str, Any], standard: dict[str, Any] | None) -> int:
    """How many configuration keys differ from the standard row's."""
    if standard is None:
        return 0
    a, b = config_of(row), config_of(standard)
    return sum(value_key(a.get(k)) != value_key(b.get(k)) for k in set(a) | set(b))


def select_row(metric: str, rows: Iterable[dict[str, Any]], standard: dict[str, Any] | None = None
               ) -> dict[str, Any] | None:
    """The row chosen on validation: best ``val_value``; ties go to the standard row, then to
    the row with fewer changes from it, then to the first written. Rows without a validation
    score (selection "none: ...") are never chosen; the test value is never looked at."""
    best = None
    for row in rows:
        if not has_validation(row):
            continue
        if best is None or is_better(metric, row["val_value"], best["val_value"]):
            best = row
        elif row["val_value"] == best["val_value"]:
            if best is standard or best.get("standard"):
                continue
            if row is standard or row.get("standard") or changes_from(row, standard) < changes_from(best, standard):
                best = row
    return best


def main_split(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of each task's own split (re-splits of execution.repeats are summarised apart)."""
    return [r for r in rows if not (r.get("extra") or {}).get("split")]


def best_row(metric: str, rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Best finite *test* value (the oracle); ties go to the standard row, then to the first written."""
    best = None
    for row in rows:
        if not math.isfinite(row["value"]):
            continue
        if best is None or is_better(metric, row["value"], best["value"]):
            best = row
        elif row["value"] == best["value"] and row["standard"] and not best["standard"]:
            best = row
    return best


# --------------------------------------------------------------------------- tasks


def task_infos(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[TaskInfo]:
    """Tasks that have results, nearest to the source first.

    Read from ``meta["tasks"]`` (task -> distance, group, group_name, metric, protocol) and,
    for tasks missing there, from the task registry; an unknown task goes last.
    """
    from transferlab.data.tasks import GROUPS, get_task

    given = meta.get("tasks") or {}
    if not isinstance(given, dict):
        raise TransferlabError(f"report: meta 'tasks' must map task names to their details, got {type(given).__name__}")
    names = list(dict.fromkeys(r["task"] for r in rows))
    infos = []
    for name in names:
        row_metric = Counter(r["metric"] for r in rows if r["task"] == name).most_common(1)[0][0]
        entry = dict(given.get(name) or {})
        try:
            spec = get_task(name)
            base = {"distance": spec.distance, "group": spec.group, "group_name": spec.group_name,
                    "metric": spec.metric, "protocol": spec.protocol, "title": spec.title}  # fmt: skip
        except TransferlabError:
            base = {"distance": math.inf, "group": 0, "group_name": "other", "metric": row_metric,
                    "protocol": "", "title": name}  # fmt: skip
        merged = {**base, **{k: v for k, v in entry.items() if v is not None}}
        group = int(merged.get("group", 0))
        infos.append(
            TaskInfo(
                name=name,
                distance=float(merged["distance"]),
                group=group,
                group_name=str(merged.get("group_name") or GROUPS.get(group, "other")),
                metric=str(merged.get("metric") or row_metric),
                protocol=str(merged.get("protocol") or ""),
                title=str(merged.get("title") or name),
            )
        )
    return sorted(infos, key=lambda t: (t.distance, t.group, t.name))


def summarise(rows: list[dict[str, Any]], tasks: list[TaskInfo],
              items: dict[str, dict[str, Any]] | None = None) -> list[TaskSummary]:
    """Deep Standard (the row flagged standard), Deep Optimal (chosen on validation: see
    ``select_row``) and the oracle (best on test) for every task, on the task's own split.
    With ``items`` (ResultStore.items()), optimal - standard gets its paired interval."""
    out = []
    for info in tasks:
        every = [r for r in rows if r["task"] == info.name]
        own = main_split(every) or every
        metric = info.metric if any(r["metric"] == info.metric for r in own) else own[0]["metric"]
        same = [r for r in own if r["metric"] == metric]
        standards = [r for r in same if r["standard"]]
        standard = standards[0] if standards else None
        optimal = select_row(metric, same, standard)
        reduction = None
        if standard is not None and optimal is not None and math.isfinite(standard["value"]):
            reduction = error_reduction(metric, standard["value"], optimal["value"])
        summary = TaskSummary(info, metric, same, standard, optimal, reduction, len(own) - len(same),
                              len(standards) > 1, oracle=best_row(metric, same))
        if optimal is None and same:
            reasons = sorted({str(r.get("selection") or "")[6:] for r in same if not has_validation(r)} - {""})
            summary.no_selection = "; ".join(reasons) or "no row has a validation score"
        if items is not None and standard is not None and optimal is not None:
            summary.difference = paired_difference(optimal, standard, items)
        summary.repeats = repeat_summary([r for r in every if r["metric"] == metric], metric)
        out.append(summary)
    return out


def paired_difference(a: dict[str, Any], b: dict[str, Any], items: dict[str, dict[str, Any]]):
    """``a - b`` (test values) with the paired bootstrap interval of their stored replicates."""
    from transferlab.analysis.intervals import difference

    ia, ib = items.get(a["job_key"]), items.get(b["job_key"])
    ra = ia.get("replicates") if ia else None
    rb = ib.get("replicates") if ib else None
    paired = bool(ia and ib and int(ia.get("resample_seed", -1)) == int(ib.get("resample_seed", -2)))
    return difference(a["value"], b["value"], ra, rb, paired=paired)


def repeat_summary(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Mean and std over the splits of execution.repeats of Deep Standard and Deep Optimal
    (each split chooses its own Deep Optimal on its validation data); None with one split."""
    import statistics

    splits = sorted({int((r.get("extra") or {}).get("split", 0)) for r in rows})
    if len(splits) < 2:
        return None
    values: dict[str, list[float]] = {"standard": [], "optimal": []}
    for split in splits:
        these = [r for r in rows if int((r.get("extra") or {}).get("split", 0)) == split]
        standard = next((r for r in these if r["standard"]), None)
        optimal = select_row(metric, these, standard)
        for name, row in (("standard", standard), ("optimal", optimal)):
            if row is not None and math.isfinite(row["value"]):
                values[name].append(row["value"])
    out: dict[str, Any] = {"splits": len(splits)}
    for name, vals in values.items():
        out[name] = {"mean": statistics.fmean(vals) if vals else math.nan,
                     "std": statistics.stdev(vals) if len(vals) > 1 else math.nan, "n": len(vals)}
    return out


# --------------------------------------------------------------------------- factors


def _held(factor: str, standard: dict[str, Any]) -> dict[str, Any]:
    """The standard's other factor values that a slice along ``factor`` keeps fixed.

    Learning factors change the source network, hence its name: along them the source is free.
    """
    config = config_of(standard)
    config.pop(factor, None)
    if factor in learning_factors() and factor != "source":
        config.pop("source", None)
    return config


def factor_table(factor: str, summaries: list[TaskSummary]) -> FactorTable:
    """The metric per value of ``factor`` per task.

    Per task, the other factors are held at the Deep Standard configuration ("standard"
    mode) when the results allow it: the standard row exists and at least two values of the
    factor (or all the task has) were run with the rest at standard. Factors the standard
    lacks (a trained source's snapshot when slicing along width) stay free: the best over
    them is taken and they are listed in ``free_factors``. Otherwise each value gets its
    best result over all the other factors ("best" mode). Relative values divide by
    the task's Deep Standard value, or by its Deep Optimal value when it has no standard row.
    """
    values_seen: list[Any] = []
    table = FactorTable(factor, [])
    for summary in summaries:
        name, metric = summary.task.name, summary.metric
        having = [r for r in summary.rows if factor in config_of(r)]
        if not having:
            continue
        available = {value_key(config_of(r)[factor]) for r in having}
        candidates: dict[str, list[dict[str, Any]]] = {}
        mode = "best"
        if summary.standard is not None:
            held = _held(factor, summary.standard)
            sliced = [r for r in having if all(config_of(r).get(k, _MISSING) == v for k, v in held.items())]
            in_slice = {value_key(config_of(r)[factor]) for r in sliced}
            if len(in_slice) >= min(2, len(available)):
                mode = "standard"
                for r in sliced:
                    candidates.setdefault(value_key(config_of(r)[factor]), []).append(r)
                for group in candidates.values():
                    table.free_factors.update(_differing(group, exclude={factor, *held, "source"}))
            if factor in config_of(summary.standard):
                table.standard_values[name] = config_of(summary.standard)[factor]
        if mode == "best":
            for r in having:
                candidates.setdefault(value_key(config_of(r)[factor]), []).append(r)
        reference_row = summary.standard if summary.standard is not None else summary.optimal
        reference = reference_row["value"] if reference_row is not None else math.nan
        table.modes[name] = mode
        table.references[name] = "standard" if summary.standard is not None else "optimal"
        for key, group in candidates.items():
            chosen = group[0] if len(group) == 1 else (select_row(metric, group, summary.standard)
                                                        or group[0])
            if chosen is None:
                continue
            values_seen.append(config_of(chosen)[factor])
            relative = None
            if math.isfinite(reference) and reference != 0:
                relative = chosen["value"] / reference
            table.cells[(name, key)] = FactorCell(chosen["value"], relative, chosen, len(group))
    table.values = value_order(factor, values_seen)
    return table


def _differing(rows: list[dict[str, Any]], exclude: set[str]) -> set[str]:
    """Configuration keys whose values are not the same in all ``rows``."""
    configs = [config_of(r) for r in rows]
    keys = set().union(*configs) - exclude if configs else set()
    return {k for k in keys if len({value_key(c.get(k, _MISSING)) for c in configs}) > 1}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
