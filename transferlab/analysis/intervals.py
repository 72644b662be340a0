"""Bootstrap intervals over test images (or queries), recomputing the task's own metric.

Every result row keeps the few per-item numbers its metric needs (``item_data``): for an
accuracy the correctness and label of each test image, for AP / AUC metrics the decision
values and labels, for retrieval each query's AP (or N-S count). ``replicates`` recomputes the
metric on ``N_RESAMPLES`` resamples of those items at once: a resample is a row of counts
(how often each item was drawn), so per-class means, APs and AUCs are weighted sums and cumulative
sums over one (resamples x items) matrix, with no Python loop per resample.

The resamples of a task are seeded by (task, number of items, study seed) only, so every row of
a task is scored on the *same* resamples: the difference of two rows' replicates is a paired
bootstrap of their difference (both are scored on the same test images). Intervals are the
2.5 / 97.5 percentiles (95%).

A metric registered by a user (``evaluate.register_metric``) has no vectorised form here: a
classification row keeps its labels and decision values and each resample calls the metric's
own ``compute`` on the drawn images (one call per resample, slower but exact); a retrieval row's
reported number is the mean over its queries, so its per-query values are resampled as above.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.metrics import VOC07_RECALL_THRESHOLDS

N_RESAMPLES = 1000
CONFIDENCE = 0.95

# metric -> kind of per-item data it is recomputed from
SINGLE_LABEL = ("accuracy", "mean_class_accuracy")
SCORED = ("map", "voc07_map", "mean_auc")
PER_QUERY = ("oxford_map", "revisited_map", "holidays_map", "ukb_score")


def resample_seed(task: str, n_items: int, seed: int = 0) -> int:
    """The seed of a task's resamples: equal for every row of the task, so differences pair."""
    digest = hashlib.sha256(f"bootstrap:{task}:{n_items}:{seed}".encode()).hexdigest()
    return int(digest[:12], 16)


@functools.lru_cache(maxsize=16)
def resample_counts(n_items: int, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """(n_resamples, n_items) float32 counts: how often each item is drawn in each resample
    (cached and read-only: every row of a task uses the same matrix)."""
    counts = _draw_counts(n_items, seed, n_resamples)
    counts.flags.writeable = False
    return counts


def _draw_counts(n_items: int, seed: int, n_resamples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_items, size=(n_resamples, n_items))
    flat = (picks + (np.arange(n_resamples) * n_items)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n_items).reshape(n_resamples, n_items).astype(np.float32)


def item_data(metric: str, labels: np.ndarray | None, scores: np.ndarray | None = None,
              per_query: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-item numbers the metric is recomputed from (what a row stores)."""
    if per_query is not None and metric not in SINGLE_LABEL + SCORED:  # retrieval: a mean over queries
        return {"per_query": np.asarray(per_query, dtype=np.float64)}
    if metric in PER_QUERY:
        return {"per_query": np.asarray(per_query, dtype=np.float64)}
    if metric in SINGLE_LABEL:
        if scores is None:
            raise ValueError(f"metric {metric}: item_data needs the scores")
        y = np.asarray(labels, dtype=np.int64)
        return {"labels": y, "correct": np.argmax(scores, axis=1) == y}
    if metric in SCORED:
        y = np.asarray(labels)
        s = np.asarray(scores, dtype=np.float32)
        if y.ndim == 1:  # single-label task scored with an AP metric: one-vs-rest
            binary = -np.ones(s.shape, dtype=np.int8)
            binary[np.arange(len(y)), y] = 1
            return {"labels": binary, "scores": s}
        return {"labels": y.astype(np.int8), "scores": s}
    if _is_registered_classification(metric):
        if scores is None:
            raise ValueError(f"metric {metric}: item_data needs the scores")
        return {"labels": np.asarray(labels), "scores": np.asarray(scores, dtype=np.float32)}
    raise TransferlabError(f"no bootstrap for metric {metric!r}: it is not a registered metric")


def _is_registered_classification(metric: str) -> bool:
    from transferlab.evaluate import METRICS

    return metric in METRICS and METRICS[metric].kind == "classification"


def _recomputed_replicates(metric: str, items: dict[str, np.ndarray], w: np.ndarray) -> np.ndarray:
    """A registered metric without a vectorised form: its own function on every resample's
    drawn items (nan where it is undefined on a resample)."""
    from transferlab.evaluate import evaluate_classification

    labels, scores = items["labels"], items["scores"]
    drawn = np.arange(len(labels))
    out = np.full(len(w), np.nan)
    for r, counts in enumerate(w):
        picked = np.repeat(drawn, counts.astype(np.int64))
        try:
            out[r] = float(evaluate_classification(metric, labels[picked], scores[picked])[metric])
        except TransferlabError:
            continue
    return out


def n_items(items: dict[str, np.ndarray]) -> int:
    return len(items["per_query"] if "per_query" in items else items["labels"])


def replicates(metric: str, items: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The metric on every resample: (n_resamples,) float64 (nan where undefined)."""
    w = np.asarray(counts, dtype=np.float64)
    if "per_query" in items:
        values = items["per_query"]
        ok = np.isfinite(values)
        den = w[:, ok].sum(1)
        return _divide(w[:, ok] @ values[ok], den)
    if metric == "accuracy":
        return _divide(w @ items["correct"].astype(np.float64), w.sum(1))
    if metric == "mean_class_accuracy":
        y = items["labels"]
        classes = np.unique(y)
        onehot = (y[:, None] == classes[None, :]).astype(np.float64)
        per_class = _divide(w @ (onehot * items["correct"][:, None]), w @ onehot)
        return _nanmean(per_class)
    if metric not in SCORED:
        return _recomputed_replicates(metric, items, w)
    per_class = np.stack([_column_replicates(metric, items["scores"][:, k], items["labels"][:, k], w)
                          for k in range(items["labels"].shape[1])], axis=1)
    return _nanmean(per_class)


def point_value(metric: str, items: dict[str, np.ndarray]) -> float:
    """The metric on the items themselves (every count 1): equals the row's value."""
    return float(replicates(metric, items, np.ones((1, n_items(items)), dtype=np.float32))[0])


def _column_replicates(metric: str, scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    valid = labels != 0
    if metric == "mean_auc":
        order = np.argsort(scores, kind="stable")
        s, y = scores[order], labels[order]
        wv = w[:, order] * valid[order]
        pos, neg = wv * (y == 1), wv * (y == -1)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        pos_g = np.add.reduceat(pos, starts, axis=1)
        neg_g = np.add.reduceat(neg, starts, axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        return _divide((pos_g * (below + 0.5 * neg_g)).sum(1), n_pos * n_neg)
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    wv = w[:, order] * valid[order]
    hit = wv * (y == 1)
    tp = np.cumsum(hit, axis=1)
    seen = np.cumsum(wv, axis=1)
    precision = _divide(tp, seen, fill=0.0)
    n_pos = tp[:, -1]
    n_neg = seen[:, -1] - n_pos
    undefined = (n_pos == 0) | (n_neg == 0)  # as mean_average_precision leaves such columns out
    if metric == "map":
        out = _divide((hit * precision).sum(1), n_pos)
    else:  # voc07_map: precision maximised at recall >= t, 11 thresholds
        recall = _divide(tp, n_pos[:, None], fill=0.0)
        best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        out = np.zeros(len(w))
        rows = np.arange(len(w))
        for t in VOC07_RECALL_THRESHOLDS:
            reached = recall >= t
            first = np.argmax(reached, axis=1)
            out += np.where(reached.any(1), best_after[rows, first], 0.0) / 11
    out[undefined] = np.nan
    return out


def _divide(num: np.ndarray, den: np.ndarray, fill: float = np.nan) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, fill)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(matrix: np.ndarray) -> np.ndarray:
    ok = np.isfinite(matrix)
    return _divide(np.where(ok, matrix, 0.0).sum(1), ok.sum(1))


def percentile_interval(reps: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentile interval of the finite replicates; nan when there are none."""
    finite = np.asarray(reps, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Interval:
    """A row's test metric with its 95% bootstrap interval and the replicates behind it."""

    value: float
    low: float
    high: float
    replicates: np.ndarray
    seed: int


def row_interval(metric: str, items: dict[str, np.ndarray], task: str, seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> Interval:
    """Interval of one row; its replicates pair with every other row of the task."""
    n = n_items(items)
    rs = resample_seed(task, n, seed)
    reps = replicates(metric, items, resample_counts(n, rs, n_resamples))
    low, high = percentile_interval(reps)
    return Interval(point_value(metric, items), low, high, reps.astype(np.float32), rs)


@dataclass(frozen=True)
class Difference:
    """``a - b`` on the same test items, with its paired 95% interval."""

    value: float
    low: float
    high: float
    paired: bool  # False: the two rows' resamples differ (other test items), interval unpaired

    @property
    def measurable(self) -> bool:
        """The interval excludes 0 (a difference the test set can tell apart)."""
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | bool | None]:
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"value": num(self.value), "low": num(self.low), "high": num(self.high),
                "paired": self.paired, "measurable": self.measurable}


def difference(value_a: float, value_b: float, reps_a: np.ndarray | None, reps_b: np.ndarray | None,
               paired: bool = True) -> Difference:
    """Paired bootstrap interval of ``a - b`` from replicates drawn on the same resamples.

    With replicates of different resamples (``paired=False``) the interval is that of the
    difference of independent resamples, wider than a paired one; without replicates, nan."""
    if reps_a is None or reps_b is None or len(reps_a) != len(reps_b):
        return Difference(value_a - value_b, math.nan, math.nan, False)
    low, high = percentile_interval(np.asarray(reps_a, np.float64) - np.asarray(reps_b, np.float64))
    return Difference(value_a - value_b, low, high, paired)
