"""Factor-vs-distance analysis and its report section, on hand-made rows whose correlations
are computed by hand.

Four tasks ta..td at distances 1..4 (accuracy), layers swept one at a time around the Deep
Standard (layer -1, avg, l2), pooling grid2 on layer -1, and a fine-tuned row of layer -1:

    task  dist  -1 (std)  -2    -3    -4    grid2  ft on   best layer  err. reduction  ft gain
    ta    1     .60       .55   .50   —     .58    .59     -1 (d 1)    0               -.01
    tb    2     .60       .62   .68   —     .55    .63     -3 (d 3)    (.40-.32)/.40=.20  .03
    tc    3     .60       .70   .65   —     .59    .62     -2 (d 2)    (.40-.30)/.40=.25  .02
    td    4     .50       .55   .60   .70   .48    .56     -4 (d 4)    (.50-.30)/.50=.40  .06

Depth of the best layer 1, 3, 2, 4 against distance 1, 2, 3, 4: d = rank differences
0, -1, 1, 0, so rho = 1 - 6 * 2 / (4 * 15) = 0.8; with n = 4 the t statistic is
0.8 * sqrt(2 / 0.36) = 1.8856 on 2 degrees of freedom, whose two-sided p is exactly 0.2
(t cdf on 2 df: 1/2 + t / (2 sqrt(2 + t^2)) = 0.9). Error reductions 0, .2, .25, .4 rise with
distance: rho = 1. Fine-tuning gains -.01, .03, .02, .06: ranks 1, 3, 2, 4: rho = 0.8. Best
pooling is avg everywhere: no variation.

LogME stored with the standard-post-processing rows: increasing with the value for ta
(rho = +1, top-1 hit), decreasing for tb (rho = -1, top-1 miss), absent for tc and td.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from transferlab.errors import TransferlabError
from transferlab.report.factors import analyse, spearman

VALUES = {
    "ta": {-1: 0.60, -2: 0.55, -3: 0.50, "grid2": 0.58, "ft": 0.59},
    "tb": {-1: 0.60, -2: 0.62, -3: 0.68, "grid2": 0.55, "ft": 0.63},
    "tc": {-1: 0.60, -2: 0.70, -3: 0.65, "grid2": 0.59, "ft": 0.62},
    "td": {-1: 0.50, -2: 0.55, -3: 0.60, -4: 0.70, "grid2": 0.48, "ft": 0.56},
}
DISTANCE = {"ta": 1, "tb": 2, "tc": 3, "td": 4}


def _row(task: str, value: float, layer: int = -1, pooling: str = "avg", finetune: str = "off",
         logme: float | None = None) -> dict:
    factors = {"layer": layer, "layer_name": f"L{-layer}", "pooling": pooling, "normalisation": "l2", "pca": 0,
               "views": "orig", "finetune": finetune, "sweep": "sweep"}  # fmt: skip
    standard = (layer, pooling, finetune) == (-1, "avg", "off")
    extra = {"C": 1.0} if logme is None else {"C": 1.0, "logme": logme}
    return {"source": "net", "task": task, "factors": factors, "metric": "accuracy", "value": value,
            "metrics": {"accuracy": value}, "standard": standard, "extra": extra,
            "val_value": value, "selection": "val", "job_key": f"{task}{layer}{pooling}{finetune}"}  # fmt: skip


def _logme(task: str, value: float) -> float | None:
    return {"ta": 10 * value, "tb": -10 * value}.get(task)


def make_rows(tasks=("ta", "tb", "tc", "td")) -> list[dict]:
    rows = []
    for task in tasks:
        v = VALUES[task]
        for layer in (-1, -2, -3, -4):
            if layer in v:
                rows.append(_row(task, v[layer], layer, logme=_logme(task, v[layer])))
        rows.append(_row(task, v["grid2"], -1, "grid2", logme=_logme(task, v["grid2"])))
        rows.append(_row(task, v["ft"], -1, "avg", "on", logme=0.0))  # fine-tuned: not a candidate
    return rows


def make_meta(tasks=("ta", "tb", "tc", "td")) -> dict:
    return {
        "tasks": {t: {"distance": DISTANCE[t], "group": 1, "group_name": "image classification",
                      "metric": "accuracy", "title": t} for t in tasks},  # fmt: skip
        "standard": {"layer": -1, "pooling": "avg", "normalisation": "l2", "pca": 0, "views": "orig",
                     "finetune": "off", "qe": 0},  # fmt: skip
    }


def test_spearman_by_hand_formula():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # d = -1, 1, -1, 1, 0 -> sum d^2 = 4 -> rho = 1 - 24 / (5 * 24) = 0.8
    corr = spearman(x, y)
    assert corr.ok and corr.rho == pytest.approx(0.8)
    assert corr.n == 5
    assert -1 <= corr.low <= corr.high <= 1
    again = spearman(x, y)
    assert (again.low, again.high) == (corr.low, corr.high)  # seeded bootstrap
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]).rho == pytest.approx(-1.0)


def test_spearman_refuses_silent_numbers():
    few = spearman([1, 2], [3, 4])
    assert few.status == "not enough tasks" and math.isnan(few.rho) and math.isnan(few.p_value)
    assert "at least 3" in few.note
    flat = spearman([1, 2, 3], [5, 5, 5])
    assert flat.status == "no variation" and math.isnan(flat.rho) and "value (5)" in flat.note
    with pytest.raises(TransferlabError, match="finite"):
        spearman([1, 2, float("nan")], [1, 2, 3])
    with pytest.raises(TransferlabError, match="one length"):
        spearman([1, 2, 3], [1, 2])


def test_hypotheses_match_hand_computation():
    analysis = analyse(make_rows(), make_meta())
    layer = analysis.hypothesis("layer")
    assert layer.tasks == ["ta", "tb", "tc", "td"]
    assert layer.values == [1.0, 3.0, 2.0, 4.0]
    assert layer.correlation.rho == pytest.approx(0.8)
    assert layer.correlation.p_value == pytest.approx(0.2)
    assert layer.verdict == "agrees, not significant"
    assert "rho = +0.80" in layer.reading and "p = 0.2" in layer.reading

    optimal = analysis.hypothesis("optimal")
    assert optimal.values == pytest.approx([0.0, 0.2, 0.25, 0.4])
    assert optimal.correlation.rho == pytest.approx(1.0)
    assert optimal.verdict == "agrees" and "as the paper found" in optimal.reading

    tuned = analysis.hypothesis("finetune")
    assert tuned.values == pytest.approx([-0.01, 0.03, 0.02, 0.06])
    assert tuned.correlation.rho == pytest.approx(0.8)
    by_task = {t["task"]: t for t in analysis.finetune}
    assert by_task["tb"]["on"] == 0.63 and by_task["tb"]["off"] == 0.60

    pooling = analysis.hypothesis("pooling")
    assert pooling.correlation.status == "no variation" and pooling.values == [1.0] * 4
    assert "cannot be tested" in pooling.reading


def test_best_values_and_gains():
    analysis = analyse(make_rows(), make_meta())
    cells = {(b["factor"], b["task"]): b for b in analysis.best_values}
    assert cells[("layer", "tb")]["best"] == ["-3"]
    assert cells[("layer", "tb")]["gain"] == pytest.approx(0.08)  # .68 - .60
    assert cells[("layer", "ta")]["gain"] == 0.0
    assert cells[("pooling", "tc")]["best"] == ["avg"] and cells[("pooling", "tc")]["standard"] == "avg"
    assert ("finetune", "ta") not in cells  # fine-tuning has its own table


def test_opposite_trend_is_reported_as_disagreement():
    rows = make_rows()
    meta = make_meta()
    for task, rank in zip(("ta", "tb", "tc", "td"), (4, 3, 2, 1), strict=True):
        meta["tasks"][task]["distance"] = rank  # reverse the ordering
    optimal = analyse(rows, meta).hypothesis("optimal")
    assert optimal.correlation.rho == pytest.approx(-1.0)
    assert optimal.verdict == "disagrees" and "disagrees with the paper" in optimal.reading


def test_distance_from_meta_distances_and_fallback():
    meta = make_meta()
    # source-prediction distances that order the tasks td < tc < tb < ta
    meta["distances"] = {t: {"paper": DISTANCE[t], "source_prediction": 1.0 - DISTANCE[t] / 10} for t in DISTANCE}
    analysis = analyse(make_rows(), meta, distance="source_prediction")
    assert analysis.distance == "source_prediction"
    assert analysis.hypothesis("optimal").correlation.rho == pytest.approx(-1.0)
    meta["distances"]["tc"]["source_prediction"] = None
    partial = analyse(make_rows(), meta, distance="source_prediction")
    assert "tc" not in partial.hypothesis("optimal").tasks
    assert any("tc" in note for note in partial.notes)
    fallback = analyse(make_rows(), make_meta(), distance="source_prediction")
    assert fallback.distance == "paper" and any("paper" in note for note in fallback.notes)


def test_not_enough_tasks_is_stated():
    analysis = analyse(make_rows(("ta", "tb")), make_meta(("ta", "tb")))
    for h in analysis.hypotheses:
        assert not h.correlation.ok
        assert math.isnan(h.correlation.rho)
    layer = analysis.hypothesis("layer")
    assert layer.correlation.status == "not enough tasks"
    assert "cannot be tested" in layer.reading and "2 tasks" in layer.reading
    with pytest.raises(TransferlabError):
        analyse([], make_meta())


def test_transferability_rank_correlation():
    analysis = analyse(make_rows(), make_meta())
    entries = {(e["score"], e["task"]): e for e in analysis.transferability}
    assert set(entries) == {("logme", "ta"), ("logme", "tb")}  # only rows carrying the score
    assert entries[("logme", "ta")]["rows"] == 4  # 3 layers + grid2; the fine-tuned row is left out
    assert entries[("logme", "ta")]["rho"] == pytest.approx(1.0) and entries[("logme", "ta")]["top1_hit"]
    assert entries[("logme", "tb")]["rho"] == pytest.approx(-1.0) and not entries[("logme", "tb")]["top1_hit"]
    (summary,) = analysis.score_summaries
    assert summary.score == "logme" and summary.tasks == 2
    assert summary.mean_rho == pytest.approx(0.0)
    # tasks resampled: rho +1 and -1 give means -1, 0 or +1, so the 95% interval spans both ends
    assert (summary.mean_low, summary.mean_high) == (pytest.approx(-1.0), pytest.approx(1.0))
    assert "mean rho = +0.00 [-1.00, +1.00] over 2 tasks" in summary.reading
    assert (summary.top1_hits, summary.top1_tasks) == (1, 2)
    assert "1 of 2 tasks" in summary.reading


def test_to_dict_is_json_ready():
    import json

    text = json.dumps(analyse(make_rows(), make_meta()).to_dict())
    assert '"verdict"' in text


# --------------------------------------------------------------------------- report section


def test_section_renders_tables_and_figures():
    from transferlab.report.factor_sections import factors_versus_distance

    fragment = factors_versus_distance(make_rows(), make_meta())
    assert fragment.startswith("<h2>Factors versus distance</h2>")
    assert fragment.count("data:image/png;base64,") == 3
    assert fragment.count("<table") >= 3
    assert "later layers for near tasks, earlier for far" in fragment
    assert "rho = +0.80 (p = 0.2" in fragment  # the reading under the first figure
    assert "agrees, not significant" in fragment
    assert "1-NN" not in fragment  # no knn1 score stored: no empty panel
    # each task's rho in the score table carries its bootstrap interval over the rows
    assert re.search(r'<td class="num">\+1\.00 <small>\[[+−-]\d\.\d\d, [+−-]\d\.\d\d\]</small></td>', fragment)
    assert factors_versus_distance([], make_meta()) is None


def test_section_is_in_the_built_report(tmp_path):
    from transferlab.report import build_report
    from transferlab.results.rows import ResultRow
    from transferlab.results.store import ResultStore

    store = ResultStore(tmp_path, provenance={"config_hash": "x", "versions": {}, "git_commit": None, "seed": 0,
                                              "device": "cpu"})  # fmt: skip
    keep = {"source", "task", "factors", "metric", "value", "metrics", "standard", "extra", "val_value", "selection"}
    store.add_many([ResultRow(**{k: v for k, v in r.items() if k in keep}) for r in make_rows()])
    meta = make_meta()
    store.set_meta("tasks", meta["tasks"])
    store.set_meta("standard", meta["standard"])
    store.close()
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "error-box" not in page.split("</style>", 1)[1]
    section = re.search(r"<h2>Factors versus distance</h2>.*?</section>", page, flags=re.S)
    assert section is not None
    assert "data:image/png" in section.group(0)
    assert 'href="#extra-0">Factors versus distance' in page


def test_registered_once():
    import importlib

    import transferlab.report as report
    import transferlab.report.factor_sections as module

    importlib.reload(module)
    names = [s for s in report.sections if getattr(s, "__name__", "") == "factors_versus_distance"]
    assert len(names) >= 1
    assert np.sum([s is module.factors_versus_distance for s in report.sections]) == 1
