"""Factor-vs-distance analysis of a finished study: do the best factor values move with the
distance of the target task from the source task, as Azizpour et al. found?

``analyse(rows, meta)`` works on ``ResultStore.rows()`` and ``ResultStore.meta()`` only and
returns an ``Analysis``: per factor, the best value per task and its gain over the standard
value; the paper's hypotheses as Spearman rank correlations against task distance (each with
scipy's p-value and a seeded bootstrap 95% interval); and how well the transferability scores
stored with each probe row (``extra["logme"]``, ``extra["knn1"]``) rank a task's
representations like the probe does. Nothing is silently a number: with fewer than 3 tasks,
or when every task has the same value, a correlation is NaN and says why.

Protocol of each number (also in docs/analysis.md):

- *best value of a factor for a task*: the report's factor slice (``report.tables.
  factor_table``): the other factors held at the task's Deep Standard configuration when the
  study ran them so, otherwise the best over the other factors. "Best" is the best
  *validation* score (``report.tables.select_row``), never the test score; ties (same
  validation score) are all kept; a hypothesis then uses the mean of the tied values.
- *depth of the best layer*: ``-layer`` for layers given from the top (``-1`` -> 1 = last).
- *pooling fineness* (the pooling registry, ``features.pooling``): avg, max, gem, grid1, cls,
  cls+avg -> 1; gridK -> K; rmac and windows
  (multi-region: R-MAC's 3 scales, spatial search's sub-windows) -> 3.
- *fine-tuning gain*: per task, the best row with ``finetune = on`` against the row with the
  same configuration and ``finetune = off``: err(off) - err(on), err = the report's error
  (1 - score, or (4 - N-S) / 4 for UKBench), so > 0 = fine-tuning helped.
- *Deep Optimal gain*: the report's relative error reduction of Deep Optimal over Deep
  Standard, (err_std - err_opt) / err_std.
- *transferability*: per task and score, the rows that carry the score and keep the
  standard post-processing (normalisation, PCA, views, fine-tuning as in the standard
  setting): the (source, layer, pooling) candidates that ``transferlab select`` ranks. Spearman
  of score vs measured metric over those rows (at least 3); then the mean over tasks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab.analysis.correlation import Correlation, spearman
from transferlab.analysis.intervals import percentile_interval, resample_counts, resample_seed
from transferlab.analysis.transferability import stored_scores
from transferlab.errors import TransferlabError
from transferlab.evaluate import higher_is_better
from transferlab.report.tables import (
    TaskInfo,
    TaskSummary,
    config_of,
    error_of,
    factor_table,
    has_validation,
    paired_difference,
    select_row,
    summarise,
    task_infos,
    value_key,
    value_label,
    varying_factors,
)
from transferlab.results.factors import get_factor, setting_factors

SIGNIFICANCE = 0.05

SCORES: dict[str, str] = stored_scores()  # name -> title: the scores stored with every probe row
"""Transferability scores stored in a probe row's ``extra``, with their display names."""



def post_processing() -> tuple[str, ...]:
    """The setting factors that post-process the features rather than pick them (every one
    but layer and pooling: results.factors' ``representation``)."""
    return tuple(f.name for f in setting_factors() if not f.representation)


# --------------------------------------------------------------------------- results


@dataclass
class Hypothesis:
    """One of the paper's claims, tested as the rank correlation of a per-task value with distance."""

    key: str
    claim: str  # the paper's statement
    measure: str  # what the per-task value is
    expected: int  # +1: the value should grow with distance, -1: shrink
    tasks: list[str]
    distances: list[float]
    values: list[float]
    correlation: Correlation
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it is not in the test

    @property
    def verdict(self) -> str:
        c = self.correlation
        if not c.ok:
            return c.status
        same = np.sign(c.rho) == self.expected
        if c.rho == 0:
            return "no trend"
        if c.p_value < SIGNIFICANCE:
            return "agrees" if same else "disagrees"
        return "agrees, not significant" if same else "disagrees, not significant"

    @property
    def reading(self) -> str:
        """One line saying what the data says, and whether that is what the paper found."""
        c = self.correlation
        if not c.ok:
            return f"{self.claim}: cannot be tested here ({c.status}: {c.note})."
        numbers = f"rho = {c.rho:+.2f} (p = {c.p_value:.2g}, 95% CI {c.low:+.2f} to {c.high:+.2f}, {c.n} tasks)"
        direction = "grows" if c.rho > 0 else "shrinks"
        what = f"{self.measure} {direction} with distance" if c.rho != 0 else f"{self.measure} shows no trend"
        verdict = self.verdict
        quoted = f"'{self.claim}'"
        if verdict == "agrees":
            tail = f"as the paper found: {quoted}"
        elif verdict == "disagrees":
            tail = f"this disagrees with the paper's {quoted}"
        elif verdict == "agrees, not significant":
            tail = f"the direction of the paper's {quoted}, but not significant at {SIGNIFICANCE:g}"
        elif verdict == "disagrees, not significant":
            tail = f"opposite to the paper's {quoted}, but not significant at {SIGNIFICANCE:g}"
        else:
            tail = f"the paper expected a trend: {quoted}"
        return f"{numbers}: {what}; {tail}."

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        out["reading"] = self.reading
        return out


@dataclass
class ScoreSummary:
    """How well one transferability score ranks the representations of the tasks."""

    score: str
    tasks: int  # tasks with a rank correlation
    mean_rho: float
    mean_low: float  # 95% bootstrap interval of mean_rho over the tasks (one task: its own interval)
    mean_high: float
    top1_hits: int  # tasks where the best-scored row is (one of) the best measured
    top1_tasks: int
    reading: str


@dataclass
class Analysis:
    """Everything ``analyse`` found; tables are lists of plain dicts (JSON-ready)."""

    distance: str
    tasks: list[dict[str, Any]]
    best_values: list[dict[str, Any]]
    finetune: list[dict[str, Any]]
    optimal: list[dict[str, Any]]
    hypotheses: list[Hypothesis]
    transferability: list[dict[str, Any]]
    score_summaries: list[ScoreSummary]
    notes: list[str] = field(default_factory=list)

    def hypothesis(self, key: str) -> Hypothesis:
        for h in self.hypotheses:
            if h.key == key:
                return h
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "tasks": self.tasks,
            "best_values": self.best_values,
            "finetune": self.finetune,
            "optimal": self.optimal,
            "hypotheses": [h.to_dict() for h in self.hypotheses],
            "transferability": self.transferability,
            "score_summaries": [asdict(s) for s in self.score_summaries],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- distance


def task_distances(tasks: list[TaskInfo], meta: dict[str, Any], distance: str) -> tuple[dict[str, float], list[str]]:
    """Distance of each task: ``meta["distances"][task][distance]``, else (paper distance only)
    the task's rank in ``meta["tasks"]``. Tasks without one are left out, with a note."""
    given = meta.get("distances") or {}
    if not isinstance(given, dict):
        raise TransferlabError(f"meta 'distances' must map task names to distances; got {type(given).__name__}")
    out: dict[str, float] = {}
    missing: list[str] = []
    for info in tasks:
        entry = given.get(info.name) or {}
        value = entry.get(distance) if isinstance(entry, dict) else None
        if value is None and distance == "paper":
            value = info.distance
        if value is None or not math.isfinite(float(value)):
            missing.append(info.name)
            continue
        out[info.name] = float(value)
    notes = []
    if missing:
        notes.append(f"no {distance} distance for {', '.join(missing)}: left out of the correlations")
    return out, notes


# --------------------------------------------------------------------------- per-factor bests


def _best_cells(table, task: str, metric: str) -> tuple[list[Any], float | None]:
    """Values of ``table``'s factor with the task's best *validation* score (ties all kept),
    and the test score of the chosen one. Cells without a validation score never win."""
    cells = [(v, table.cell(task, v)) for v in table.values]
    finite = [(v, c) for v, c in cells if c is not None and has_validation(c.row)]
    if not finite:
        return [], None
    chosen = select_row(metric, [c.row for _, c in finite])
    if chosen is None:
        return [], None
    top = chosen["val_value"]
    return [v for v, c in finite if c.row["val_value"] == top], chosen["value"]


def best_values(summaries: list[TaskSummary], distances: dict[str, float],
                items: dict[str, dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Per varying factor and task: the best value(s), its score, the standard value and the gain."""
    all_rows = [r for s in summaries for r in s.rows]
    factors = [f for f in varying_factors(all_rows) if f != "finetune"]
    out: list[dict[str, Any]] = []
    tables = {}
    for factor in factors:
        table = factor_table(factor, summaries)
        tables[factor] = table
        for s in summaries:
            name = s.task.name
            if name not in table.modes:
                continue
            tied, top = _best_cells(table, name, s.metric)
            if not tied:
                continue
            standard_value = table.standard_values.get(name)
            standard_cell = table.cell(name, standard_value) if name in table.standard_values else None
            standard_score = standard_cell.value if standard_cell is not None else None
            gain = (top - standard_score if top is not None and standard_score is not None
                    and math.isfinite(standard_score) else None)
            gain_low = gain_high = None
            chosen = table.cell(name, tied[0])
            if (items and gain is not None and chosen is not None and standard_cell is not None
                    and chosen.row is not standard_cell.row):
                diff = paired_difference(chosen.row, standard_cell.row, items)
                if math.isfinite(diff.low):
                    gain_low, gain_high = diff.low, diff.high
            elif gain is not None and chosen is not None and standard_cell is not None:
                gain_low = gain_high = 0.0 if chosen.row is standard_cell.row else None
            out.append({
                "factor": factor, "task": name, "distance": distances.get(name), "metric": s.metric,
                "best": [value_label(v) for v in tied], "best_raw": tied, "best_score": top,
                "standard": value_label(standard_value) if name in table.standard_values else None,
                "standard_score": standard_score, "gain": gain, "gain_low": gain_low, "gain_high": gain_high,
                "mode": table.modes[name],
            })  # fmt: skip
    return out, tables


# --------------------------------------------------------------------------- hypotheses


def _layer_depth(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value).strip()
        try:
            value = int(text)
        except ValueError:
            return None
    return float(-value) if value < 0 else None


def _pooling_fineness(value: Any) -> float | None:
    """Spatial fineness of a pooling, from the pooling registry (the side of its finest grid;
    multi-region poolings count as 3, cls and cls+avg as 1)."""
    from transferlab.features.pooling import pooling_fineness

    fineness = pooling_fineness(str(value))
    return float(fineness) if fineness is not None else None


def _factor_hypothesis(
    key: str, factor: str, claim: str, measure: str, to_number, bests: list[dict[str, Any]],
    distances: dict[str, float], order: list[str], seed: int,
) -> Hypothesis:
    by_task = {b["task"]: b for b in bests if b["factor"] == factor}
    tasks, xs, ys, skipped = [], [], [], {}
    for name in order:
        if name not in by_task:
            skipped[name] = f"the study did not vary {factor} for this task"
            continue
        if name not in distances:
            skipped[name] = "no distance"
            continue
        numbers = [to_number(v) for v in by_task[name]["best_raw"]]
        if any(n is None for n in numbers):
            skipped[name] = f"best {factor} {', '.join(by_task[name]['best'])} has no {measure}"
            continue
        tasks.append(name)
        xs.append(distances[name])
        ys.append(float(np.mean(numbers)))
    corr = _explain_skips(spearman(xs, ys, seed=seed), skipped)
    return Hypothesis(key, claim, measure, +1, tasks, xs, ys, corr, skipped)


def finetune_gains(summaries: list[TaskSummary], distances: dict[str, float]) -> list[dict[str, Any]]:
    """Per task: best fine-tuned row vs the same configuration without fine-tuning."""
    out = []
    for s in summaries:
        tuned = [r for r in s.rows if r["factors"].get("finetune") == "on"]
        best = select_row(s.metric, tuned)
        if best is None:
            continue
        wanted = {k: v for k, v in config_of(best).items() if k != "finetune"}
        plain = [
            r for r in s.rows
            if r["factors"].get("finetune") == "off"
            and {k: value_key(v) for k, v in config_of(r).items() if k != "finetune"}
            == {k: value_key(v) for k, v in wanted.items()}
        ]  # fmt: skip
        entry: dict[str, Any] = {"task": s.task.name, "distance": distances.get(s.task.name), "metric": s.metric,
                                 "on": best["value"], "off": None, "gain": None}
        if plain and math.isfinite(plain[0]["value"]):
            entry["off"] = plain[0]["value"]
            err_on, err_off = error_of(s.metric, best["value"]), error_of(s.metric, plain[0]["value"])
            if err_on is not None and err_off is not None:
                entry["gain"] = err_off - err_on
        out.append(entry)
    return out


def _explain_skips(corr: Correlation, skipped: dict[str, str]) -> Correlation:
    """Say in the note why tasks were left out when too few remain for a correlation."""
    if corr.ok or not skipped:
        return corr
    reasons: dict[str, list[str]] = {}
    for task, why in skipped.items():
        reasons.setdefault(why, []).append(task)
    if len(reasons) == 1 and corr.n == 0:
        corr.note = f"{next(iter(reasons))} for any of the {len(skipped)} tasks"
        return corr
    left = "; ".join(f"{why}: {', '.join(tasks)}" for why, tasks in reasons.items())
    corr.note = f"{corr.note}; left out ({left})"
    return corr


def _rows_hypothesis(key: str, claim: str, measure: str, table: list[dict[str, Any]], field_name: str,
                     order: list[str], seed: int, absent: str) -> Hypothesis:
    by_task = {t["task"]: t for t in table}
    tasks, xs, ys, skipped = [], [], [], {}
    for name in order:
        entry = by_task.get(name)
        if entry is None:
            skipped[name] = absent
        elif entry.get("distance") is None:
            skipped[name] = "no distance"
        elif entry.get(field_name) is None or not math.isfinite(entry[field_name]):
            skipped[name] = f"no {measure}"
        else:
            tasks.append(name)
            xs.append(float(entry["distance"]))
            ys.append(float(entry[field_name]))
    corr = _explain_skips(spearman(xs, ys, seed=seed), skipped)
    return Hypothesis(key, claim, measure, +1, tasks, xs, ys, corr, skipped)


# --------------------------------------------------------------------------- transferability


def _standard_post(summary: TaskSummary, meta: dict[str, Any]) -> dict[str, Any]:
    """The standard setting's post-processing values (meta, else the task's standard row)."""
    standard = meta.get("standard") if isinstance(meta.get("standard"), dict) else None
    if standard is None and summary.standard is not None:
        standard = summary.standard["factors"]
    standard = standard or {}
    return {k: standard.get(k, get_factor(k).default) for k in post_processing()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def transferability(
    summaries: list[TaskSummary], meta: dict[str, Any], seed: int = 0
) -> tuple[list[dict[str, Any]], list[ScoreSummary]]:
    """Per score and task: Spearman of the stored score vs the measured metric over the task's
    representation candidates (rows differing from the standard only in source, layer, pooling)."""
    table: list[dict[str, Any]] = []
    summaries_out: list[ScoreSummary] = []
    for score, label in SCORES.items():
        rhos: list[float] = []
        rho_bounds: list[tuple[float, float]] = []
        hits, top1_tasks = 0, 0
        for s in summaries:
            post = _standard_post(s, meta)
            having = [r for r in s.rows if _finite((r.get("extra") or {}).get(score)) and math.isfinite(r["value"])]
            if not having:
                continue
            rows = [r for r in having
                    if all(value_key(r["factors"].get(k, post[k])) == value_key(post[k]) for k in post)]
            seen: dict[str, dict[str, Any]] = {}
            for r in rows:  # one row per (source, layer, pooling): an optimal re-run repeats a sweep row
                seen.setdefault(value_key([r["source"], r["factors"].get("layer"), r["factors"].get("pooling")]), r)
            rows = list(seen.values())
            if not rows:
                continue
            scores = [float(r["extra"][score]) for r in rows]
            values = [float(r["value"]) for r in rows]
            sign = 1.0 if higher_is_better(s.metric) else -1.0  # oriented: +1 = ranks like the probe
            corr = spearman(scores, [sign * v for v in values], seed=seed, unit="rows")
            top1 = None
            if len(rows) >= 2:
                best_scored = int(np.argmax(scores))
                top1 = bool(values[best_scored] == (max if sign > 0 else min)(values))
                top1_tasks += 1
                hits += int(top1)
            if corr.ok:
                rhos.append(corr.rho)
                rho_bounds.append((corr.low, corr.high))
            table.append({
                "score": score, "task": s.task.name, "metric": s.metric, "rows": len(rows),
                "rho": corr.rho, "p_value": corr.p_value, "low": corr.low, "high": corr.high,
                "status": corr.status, "note": corr.note, "top1_hit": top1,
                "points": [{"source": r["source"], "layer": r["factors"].get("layer"),
                            "pooling": r["factors"].get("pooling"), "score": sc, "value": v}
                           for r, sc, v in zip(rows, scores, values, strict=True)],
            })  # fmt: skip
        if not top1_tasks:
            continue
        mean_rho = float(np.mean(rhos)) if rhos else math.nan
        mean_low, mean_high = _mean_interval(score, rhos, rho_bounds, seed)
        if rhos:
            quality = "ranks the representations like the probe" if mean_rho >= 0.5 else (
                "follows the probe only loosely" if mean_rho > 0 else "does not predict the probe's ranking")
            reading = (f"{label} {quality}: mean rho = {mean_rho:+.2f} [{mean_low:+.2f}, {mean_high:+.2f}] over "
                       f"{len(rhos)} tasks; its top-scored representation is the probe's best in {hits} of "
                       f"{top1_tasks} tasks.")
        else:
            reading = f"{label}: no task has 3 or more comparable rows with varying values; no rank correlation."
        summaries_out.append(ScoreSummary(score, len(rhos), mean_rho, mean_low, mean_high, hits, top1_tasks,
                                          reading))
    return table, summaries_out


def _mean_interval(score: str, rhos: list[float], bounds: list[tuple[float, float]],
                   seed: int) -> tuple[float, float]:
    """95% interval of the mean rho: the tasks resampled (a seeded bootstrap over tasks); with one
    task, that task's own bootstrap interval over its rows. It says how far the mean would move
    with other tasks, not how noisy each task's rho is."""
    if not rhos:
        return math.nan, math.nan
    if len(rhos) == 1:
        return bounds[0]
    counts = resample_counts(len(rhos), resample_seed(f"mean-rho:{score}", len(rhos), seed))
    reps = counts @ np.asarray(rhos, dtype=np.float64) / len(rhos)
    return percentile_interval(reps)


# --------------------------------------------------------------------------- entry point


def analyse(rows: list[dict[str, Any]], meta: dict[str, Any], distance: str = "paper", *, seed: int = 0) -> Analysis:
    """The factor-vs-distance analysis of a study's rows (see the module docstring for the protocol)."""
    if not rows:
        raise TransferlabError("analyse: the study has no results")
    infos = task_infos(rows, meta)
    summaries = summarise(rows, infos)
    distances, notes = task_distances(infos, meta, distance)
    if distance != "paper" and not distances:
        notes.append(f"no task has a {distance} distance; the paper's ordering is used instead")
        distance = "paper"
        distances, more = task_distances(infos, meta, distance)
        notes.extend(more)
    order = [t.name for t in infos]
    tasks = [{"task": t.name, "distance": distances.get(t.name), "group": t.group, "group_name": t.group_name,
              "metric": s.metric, "rows": len(s.rows)} for t, s in zip(infos, summaries, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # spearmanr on tiny samples
        bests, _ = best_values(summaries, distances, meta.get("_items"))
        hypotheses = [
            _factor_hypothesis("layer", "layer", "later layers for near tasks, earlier for far",
                               "depth of the best layer", _layer_depth, bests, distances, order, seed),
            _factor_hypothesis("pooling", "pooling", "spatial pooling gets finer for far tasks such as retrieval",
                               "fineness of the best pooling", _pooling_fineness, bests, distances, order, seed),
        ]
        tuned = finetune_gains(summaries, distances)
        hypotheses.append(_rows_hypothesis(
            "finetune", "fine-tuning helps more for far tasks", "fine-tuning gain", tuned, "gain", order, seed,
            "no fine-tuned result"))
        optimal = [{"task": s.task.name, "distance": distances.get(s.task.name), "metric": s.metric,
                    "standard": s.standard["value"] if s.standard else None,
                    "optimal": s.optimal["value"] if s.optimal else None,
                    "error_reduction": s.error_reduction} for s in summaries]
        hypotheses.append(_rows_hypothesis(
            "optimal", "Deep Optimal gains more over Deep Standard for far tasks",
            "error reduction of Deep Optimal", optimal, "error_reduction", order, seed, "no result"))
        scores, score_summaries = transferability(summaries, meta, seed)
    for b in bests:
        b.pop("best_raw")
    return Analysis(distance, tasks, bests, tuned, optimal, hypotheses, scores, score_summaries, notes)
