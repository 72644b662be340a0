"""From a task's protocol name (``TaskSpec.metric``) and a head's output to the task's numbers.

Classification heads give decision values ``scores`` (n, K); retrieval heads give a ranking
(n_queries, n_ranked) of database indices, best first. Every number comes from
``transferlab.metrics``; this module only picks the metric, reshapes the ground truth and
adds the usual companion numbers.

Result dicts are flat: ``{metric_name: value, companion_name: value, ...}`` with float
values, plus one list under ``"per_class"`` (classification: the main metric for every
class / attribute, nan where skipped) or ``"per_query"`` (retrieval: AP of every query, nan
where it has no positive; N-S count for UKBench; Medium AP for revisited).

Every metric is one ``MetricSpec`` in ``METRICS`` (``register_metric``): its kind, protocol
text, range, direction and the function that computes it with its companions. ``PROTOCOLS``,
``higher_is_better``, ``metric_range`` and ``metric_kind`` all read that one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from transferlab import metrics as M
from transferlab.data.base import Query
from transferlab.errors import TransferlabError


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``compute`` gets (labels, scores (n, K), n_classes) for classification and
    returns ({name: value} with companions, {name: per-class list}); for retrieval it gets
    (ranking, queries, positives, db_size) and returns the result dict with ``per_query``."""

    name: str
    kind: Literal["classification", "retrieval"]
    protocol: str
    compute: Callable[..., Any]
    worst: float = 0.0
    best: float = 1.0
    higher_is_better: bool = True


METRICS: dict[str, MetricSpec] = {}
PROTOCOLS: dict[str, str] = {}  # name -> protocol text, kept in step with METRICS


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric; a name is registered once (a second registration is an error)."""
    if spec.name in METRICS:
        raise TransferlabError(f"metric {spec.name!r} is registered twice")
    METRICS[spec.name] = spec
    PROTOCOLS[spec.name] = spec.protocol
    return spec


def _check_metric(metric: str) -> MetricSpec:
    if metric not in METRICS:
        raise TransferlabError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[metric]


def higher_is_better(metric: str) -> bool:
    return _check_metric(metric).higher_is_better


def metric_range(metric: str) -> tuple[float, float]:
    """(worst, best) attainable value: (0, 1) for APs, accuracies and AUC; (0, 4) for UKBench."""
    spec = _check_metric(metric)
    return spec.worst, spec.best


def error_of(metric: str, value: float) -> float:
    """The error in [0, 1] behind a score, for the report's error-reduction table:
    1 - value for [0, 1] metrics, (4 - value) / 4 for the UKBench N-S score."""
    low, high = metric_range(metric)
    return float((high - value) / (high - low))


def metric_kind(metric: str) -> str:
    """'classification' (scores in) or 'retrieval' (ranking in)."""
    return _check_metric(metric).kind


# --------------------------------------------------------------------------- classification


def _scores_matrix(scores: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2:
        raise TransferlabError(f"scores must be (n_images, n_classes), got shape {s.shape}")
    if s.shape[0] != n:
        raise TransferlabError(f"scores has {s.shape[0]} rows but labels has {n} images")
    if s.dtype.kind not in "biuf":
        raise TransferlabError(f"scores must be numeric, got dtype {s.dtype}")
    if np.isnan(s).any():
        row = int(np.flatnonzero(np.isnan(s).any(axis=1))[0])
        raise TransferlabError(f"scores contain NaN (first in row {row})")
    return s.astype(np.float64, copy=False)


def _single_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TransferlabError(
            f"single-label metrics need int class indices of shape (n,), got {y.dtype} {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        bad = int(y[(y < 0) | (y >= n_classes)][0])
        raise TransferlabError(f"label {bad} outside the {n_classes} score columns")
    return y.astype(np.int64, copy=False)


def _binary_matrix(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) labels in {1,-1,0}; single-label class indices become one-vs-rest 1/-1."""
    y = np.asarray(labels)
    if y.ndim == 1:
        y = _single_labels(y, n_classes)
        out = -np.ones((len(y), n_classes), dtype=np.int8)
        out[np.arange(len(y)), y] = 1
        return out
    if y.ndim != 2 or y.shape[1] != n_classes:
        raise TransferlabError(f"labels shape {y.shape} does not match {n_classes} score columns")
    return y


def _ap_family(metric: str) -> Callable[..., Any]:
    """voc07_map / map / mean_auc, with ``map`` as companion (and voc07_map beside map)."""

    def compute(y: np.ndarray, s: np.ndarray, n_classes: int) -> tuple[dict[str, float], dict[str, list[float]]]:
        yb = _binary_matrix(y, n_classes)
        per: dict[str, list[float]] = {"voc07_map": [], "map": [], "mean_auc": []}
        values: dict[str, float] = {}
        if metric == "mean_auc":
            values["mean_auc"] = M.mean_auc(s, yb, per_class=per["mean_auc"])
        else:
            values["voc07_map"] = M.mean_average_precision(s, yb, M.voc07_ap, per_class=per["voc07_map"])
        values["map"] = M.mean_average_precision(s, yb, M.average_precision, per_class=per["map"])
        return values, per

    return compute


def _accuracy_family(metric: str) -> Callable[..., Any]:
    """accuracy / mean_class_accuracy of the arg-max prediction, each the other's companion."""

    def compute(y: np.ndarray, s: np.ndarray, n_classes: int) -> tuple[dict[str, float], dict[str, list[float]]]:
        yt = _single_labels(y, n_classes)
        pred = np.argmax(s, axis=1)
        classes, accs = M.per_class_accuracy(yt, pred)
        full = np.full(n_classes, np.nan)
        full[classes] = accs
        values = {"mean_class_accuracy": float(accs.mean()), "accuracy": M.accuracy(yt, pred)}
        return values, {metric: full.tolist()}

    return compute


def evaluate_classification(metric: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Score decision values with the task's protocol.

    ``labels`` as in ``Split``: int (n,) class indices (single-label) or int8 (n, K) in
    {1,-1,0} (multi-label / attributes). ``scores`` (n, K). AP metrics accept single-label
    tasks too (one-vs-rest). Predictions for accuracies are the arg-max column (first on ties).

    Returns ``{metric: value, companions..., "per_class": [...]}``; companions: ``map`` with
    ``voc07_map`` and vice versa, ``map`` with ``mean_auc``, ``accuracy`` with
    ``mean_class_accuracy`` and vice versa.
    """
    spec = _check_metric(metric)
    if spec.kind != "classification":
        raise TransferlabError(f"{metric} is a retrieval metric: use evaluate_retrieval")
    y = np.asarray(labels)
    s = _scores_matrix(scores, len(y))
    try:
        values, per = spec.compute(y, s, s.shape[1])
    except M.MetricInputError as exc:
        raise TransferlabError(f"{metric}: {exc}") from None
    # the protocol's own number first, then companions, then the per-class list
    out: dict[str, Any] = {metric: values[metric]}
    out.update({k: v for k, v in values.items() if k != metric})
    out["per_class"] = per[metric]
    return out


# -------------------------------------------------------------------------------- retrieval


def _ranking(ranking: np.ndarray, n_queries: int, db_size: int) -> np.ndarray:
    r = np.asarray(ranking)
    if r.ndim != 2 or r.shape[0] != n_queries:
        raise TransferlabError(
            f"ranking must be (n_queries={n_queries}, n_ranked), got shape {r.shape}"
        )
    if r.dtype.kind not in "iu":
        raise TransferlabError(f"ranking must hold integer database indices, got dtype {r.dtype}")
    if r.shape[1] > db_size:
        raise TransferlabError(f"ranking has {r.shape[1]} columns but the database has {db_size} images")
    if r.size and (r.min() < 0 or r.max() >= db_size):
        bad = int(r.min()) if r.min() < 0 else int(r.max())
        raise TransferlabError(f"ranking holds index {bad}, outside the database of {db_size} images")
    return r


def _indices(values: np.ndarray | None, db_size: int, what: str) -> np.ndarray:
    raw = np.zeros(0, np.int64) if values is None else np.asarray(values).ravel()
    if raw.size and raw.dtype.kind not in "iu" and not (
        raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
    ):
        raise TransferlabError(f"{what} must hold integer database indices, got {raw.dtype}")
    arr = raw.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= db_size):
        raise TransferlabError(f"{what} holds index outside the database of {db_size} images")
    return arr


def ukb_groups(queries: Sequence[Query], db_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(group of each database image, group of each query) for UKBench from the queries'
    ground truth: a query's group is its ``positives`` plus its own ``db_index``. Groups of
    different queries must be equal or disjoint; images in no query's group get a group of
    their own. Raises TransferlabError when two groups overlap partially."""
    groups = np.full(db_size, -1, dtype=np.int64)
    query_groups = np.empty(len(queries), dtype=np.int64)
    next_id = 0
    for q, query in enumerate(queries):
        members = _indices(query.positives, db_size, f"query {q} ({query.name}) positives")
        if query.db_index is not None:
            members = np.union1d(members, [int(query.db_index)])
        members = np.unique(members)
        if len(members) == 0:
            raise TransferlabError(f"UKBench query {q} ({query.name}) has no group: no positives and no db_index")
        ids = np.unique(groups[members])
        if len(ids) == 1 and ids[0] == -1:
            groups[members] = next_id
            query_groups[q] = next_id
            next_id += 1
        elif len(ids) == 1 and np.count_nonzero(groups == ids[0]) == len(members):
            query_groups[q] = ids[0]
        else:
            raise TransferlabError(
                f"UKBench query {q} ({query.name}): its group {members[:8].tolist()} "
                "partially overlaps another query's group"
            )
    loose = groups == -1
    groups[loose] = next_id + np.arange(int(loose.sum()))
    return groups, query_groups


def evaluate_retrieval(metric: str, ranking: np.ndarray, queries: Sequence[Query], db_size: int) -> dict[str, Any]:
    """Score a retrieval ranking ((n_queries, n_ranked) database indices, best first; a
    truncated top-k is allowed, positives beyond it count as missed) with the task's protocol.

    - ``oxford_map``: positives = ``Query.positives`` (good+ok), ``Query.junk`` removed.
    - ``revisited_map``: uses ``Query.easy``/``hard``/``junk``; returns ``easy``, ``medium``,
      ``hard`` and ``revisited_map`` (= medium, the headline number).
    - ``holidays_map``: ``Query.db_index`` is dropped from the query's own results.
    - ``ukb_score``: groups from ``ukb_groups``; ``per_query`` holds each query's 0..4 count.
    """
    spec = _check_metric(metric)
    if spec.kind != "retrieval":
        raise TransferlabError(f"{metric} is a classification metric: use evaluate_classification")
    r = _ranking(ranking, len(queries), db_size)
    positives = [_indices(q.positives, db_size, f"query {i} ({q.name}) positives") for i, q in enumerate(queries)]
    try:
        return spec.compute(r, queries, positives, db_size)
    except M.MetricInputError as exc:
        raise TransferlabError(f"{metric}: {exc}") from None


def _oxford_map(r: np.ndarray, queries: Sequence[Query], positives: list, db_size: int) -> dict[str, Any]:
    junk = [_indices(q.junk, db_size, f"query {i} ({q.name}) junk") for i, q in enumerate(queries)]
    aps = M.retrieval_aps(r, positives, junk, db_size=db_size)
    return {"oxford_map": M.mean_over_queries(aps, "the mAP"), "per_query": aps.tolist()}


def _holidays_map(r: np.ndarray, queries: Sequence[Query], positives: list, db_size: int) -> dict[str, Any]:
    own = [q.db_index for q in queries]
    junk = [np.zeros(0, np.int64) if i is None else np.array([int(i)]) for i in own]
    aps = M.retrieval_aps(r, positives, junk, db_size=db_size)
    return {"holidays_map": M.mean_over_queries(aps, "the Holidays mAP"), "per_query": aps.tolist()}


def _revisited_map(r: np.ndarray, queries: Sequence[Query], positives: list, db_size: int) -> dict[str, Any]:
    gnd = []
    for i, q in enumerate(queries):
        if q.easy is None or q.hard is None:
            raise TransferlabError(f"revisited_map: query {i} ({q.name}) has no easy/hard ground truth")
        gnd.append({
            "easy": _indices(q.easy, db_size, f"query {i} ({q.name}) easy"),
            "hard": _indices(q.hard, db_size, f"query {i} ({q.name}) hard"),
            "junk": _indices(q.junk, db_size, f"query {i} ({q.name}) junk"),
        })
    aps_by = M.revisited_aps(r.T, gnd)
    res = {k: M.mean_over_queries(v, f"the {k} mAP") for k, v in aps_by.items()}
    return {"revisited_map": res["medium"], **res, "per_query": aps_by["medium"].tolist()}


def _ukb_score(r: np.ndarray, queries: Sequence[Query], positives: list, db_size: int) -> dict[str, Any]:
    groups, query_groups = ukb_groups(queries, db_size)
    if r.shape[1] < 4:
        raise TransferlabError(f"ukb_score needs the top 4 of each ranking, got {r.shape[1]}")
    counts = (groups[r[:, :4]] == query_groups[:, None]).sum(axis=1)
    return {"ukb_score": M.ukb_score(r, groups, query_groups), "per_query": counts.astype(np.float64).tolist()}


# ------------------------------------------------------------------------------- registry
for _spec in [
    MetricSpec("voc07_map", "classification", "mean over classes of 11-point interpolated AP, PASCAL VOC2007 devkit "
               "VOCevalcls.m (difficult ignored)", _ap_family("voc07_map")),
    MetricSpec("map", "classification", "mean over classes of non-interpolated AP (mean precision at each positive; "
               "sklearn average_precision_score without ties)", _ap_family("map")),
    MetricSpec("mean_class_accuracy", "classification", "mean over classes of per-class accuracy of the arg-max "
               "prediction (MIT Indoor 67, fine-grained sets)", _accuracy_family("mean_class_accuracy")),
    MetricSpec("accuracy", "classification", "fraction of images whose arg-max prediction is the true class (SUN397)",
               _accuracy_family("accuracy")),
    MetricSpec("mean_auc", "classification", "mean over attributes of ROC AUC, ties count one half (sklearn "
               "roc_auc_score; unknown labels ignored)", _ap_family("mean_auc")),
    MetricSpec("oxford_map", "retrieval", "mean AP over queries, good+ok positive, junk removed, trapezoidal rule of "
               "Oxford's compute_ap.cpp", _oxford_map),
    MetricSpec("revisited_map", "retrieval", "revisited Oxford/Paris kit (revisitop compute_map): mAP for Easy, "
               "Medium, Hard; headline value is Medium", _revisited_map),
    MetricSpec("holidays_map", "retrieval", "INRIA Holidays holidays_map.py: query removed from its own results, "
               "trapezoid AP, mean over queries", _holidays_map),
    MetricSpec("ukb_score", "retrieval", "UKBench N-S score: mean number of the query's group (query included) in "
               "its top 4, 0..4", _ukb_score, best=4.0),
]:
    register_metric(_spec)
CLASSIFICATION_METRICS = tuple(m.name for m in METRICS.values() if m.kind == "classification")
RETRIEVAL_METRICS = tuple(m.name for m in METRICS.values() if m.kind == "retrieval")
