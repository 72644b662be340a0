"""Cost of the intervals: a 150-row study's evaluation with and without the bootstrap, and
`transferlab report` with and without paired differences. Measured in one run, sides alternated
(ABBA) so drift on a shared machine hits both.

Rows are real probe fits (the study's LinearProbe, C on validation in the task's metric) on
synthetic features the size of the demo's tasks: 10 classes, 150 train / 50 val / 300 test
images, 1280-d (accuracy, mean class accuracy), 12 attributes (mAP, 200 test), and retrieval
rows of 50 reported queries. The interval of a row is what ``study.evaluation._row`` adds.

    .venv/bin/python benchmarks/bench_intervals.py [--rows 150] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_problem(rng, kind: str):
    d = 1280
    if kind == "map":
        k, n_test = 12, 200
        centres = rng.normal(size=(k, d)).astype(np.float32)

        def draw(n):
            y = np.where(rng.random((n, k)) < 0.25, 1, -1).astype(np.int8)
            return (y.clip(0) @ centres + 3 * rng.normal(size=(n, d))).astype(np.float32), y
    else:
        k, n_test = 10, 300
        centres = rng.normal(size=(k, d)).astype(np.float32)

        def draw(n):
            y = rng.integers(0, k, n)
            return (centres[y] + 4 * rng.normal(size=(n, d))).astype(np.float32), y
    return draw(150), draw(50), draw(n_test)


def evaluate(kind: str, metric: str, problem, with_interval: bool, task: str) -> tuple[float, float, dict | None]:
    """One row as the study computes it; returns (fit seconds, interval seconds, items)."""
    from transferlab.analysis import intervals as I
    from transferlab.evaluate import evaluate_classification
    from transferlab.heads.probe import LinearProbe, stack_validation
    from transferlab.study.evaluation import _all_class_scores, _task_scoring

    (Xtr, ytr), (Xva, yva), (Xte, yte) = problem
    multilabel = kind == "map"
    start = time.perf_counter()
    X, y, split = stack_validation(Xtr, ytr, Xva, yva)  # C chosen on val, refit on train + val
    model = LinearProbe(Cs=[0.01, 0.1, 1.0, 10.0], multilabel=multilabel, cv=split)
    n_classes = yte.shape[1] if multilabel else 10
    model.scoring = _task_scoring(metric, multilabel, n_classes, model)
    model.fit(X, y)
    scores = model.decision_function(Xte)
    if not multilabel:
        scores = _all_class_scores(scores, model.classes_, n_classes)
    evaluate_classification(metric, yte, scores)
    fit = time.perf_counter() - start
    if not with_interval:
        return fit, 0.0, None
    start = time.perf_counter()
    items = I.item_data(metric, yte, scores)
    iv = I.row_interval(metric, items, task)
    return fit, time.perf_counter() - start, {**items, "replicates": iv.replicates, "resample_seed": np.int64(iv.seed)}


def retrieval_interval(rng) -> tuple[float, dict]:
    from transferlab.analysis import intervals as I

    per_query = rng.random(50)
    start = time.perf_counter()
    items = I.item_data("oxford_map", None, per_query=per_query)
    iv = I.row_interval("oxford_map", items, "copies")
    return time.perf_counter() - start, {**items, "replicates": iv.replicates, "resample_seed": np.int64(iv.seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "intervals.json"))
    args = parser.parse_args()

    from transferlab.atomic import atomic_write_text
    from transferlab.report.html import build_report
    from transferlab.results.rows import ResultRow
    from transferlab.results.store import ResultStore

    rng = np.random.default_rng(0)
    tasks = [("t_acc", "single", "accuracy"), ("t_mca", "single", "mean_class_accuracy"), ("t_map", "map", "map")]
    problems = {name: make_problem(rng, kind) for name, kind, _ in tasks}
    per_task = args.rows // (len(tasks) + 1)
    fit_total = interval_total = 0.0
    rows = []
    for i in range(per_task):  # the same fits, the interval computed for every row (its cost timed)
        for name, kind, metric in tasks:
            fit, spent, items = evaluate(kind, metric, problems[name], True, name)
            fit_total += fit
            interval_total += spent
            value = float(np.mean(items["correct"])) if "correct" in items else float("nan")
            rows.append(ResultRow("net", name, {"layer": -1 - i % 4, "pooling": ["avg", "max"][i % 2], "i": i},
                                  metric, value, standard=i == 0, val_value=0.5 + 0.001 * i, selection="val",
                                  low=value - 0.05, high=value + 0.05, items=items))
    for i in range(args.rows - len(rows)):
        spent, items = retrieval_interval(rng)
        interval_total += spent
        value = float(np.nanmean(items["per_query"]))
        rows.append(ResultRow("net", "copies", {"layer": -1, "qe": i}, "oxford_map", value, standard=i == 0,
                              val_value=0.5 + 0.001 * i, selection="queries 50%", items=items))

    work = Path(tempfile.mkdtemp(prefix="bench-intervals-"))
    with_items, without = work / "with", work / "without"
    with ResultStore(with_items) as store:
        store.add_many(rows)
    for r in rows:
        r.items = None
    with ResultStore(without) as store:
        store.add_many(rows)
    report = {"with": [], "without": []}
    for side in ("with", "without", "without", "with", "with", "without"):  # ABBA
        start = time.perf_counter()
        build_report(with_items if side == "with" else without)
        report[side].append(time.perf_counter() - start)
    result = {
        "rows": len(rows),
        "evaluation_seconds_without_intervals": round(fit_total, 3),
        "interval_seconds": round(interval_total, 3),
        "interval_share_of_evaluation": round(interval_total / fit_total, 4),
        "report_seconds_with_intervals": [round(t, 3) for t in report["with"]],
        "report_seconds_without": [round(t, 3) for t in report["without"]],
        "report_added_seconds_median": round(float(np.median(report["with"]) - np.median(report["without"])), 3),
        "note": "2-core machine shared with other jobs; ratios within one run",
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
