"""Classification metrics as the benchmarks' kits compute them (VOC07 11-point AP, AP, accuracy, AUC)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from transferlab.metrics.checks import (
    MetricInputError,
    _binary_labels,
    _class_vector,
    _ranked_binary,
    _scores_1d,
    mean_leaving_out_nan,
)

# The 11 recall thresholds of VOC2007 ``for t=0:0.1:1``, as the doubles MATLAB's colon
# operator produces: the first half is a + k*d, the second half b - (n-k)*d (MathWorks
# solution 1-4FLI96, "How does the COLON operator work?"). So t[3] = 3*0.1 =
# 0.30000000000000004 but t[6] = 1 - 4*0.1 == 0.6 and t[7] = 1 - 3*0.1 == 0.7, whereas the
# common Python port ``np.arange(0., 1.1, 0.1)`` has 0.6000000000000001 and
# 0.7000000000000001. The two differ only when a recall equals 0.6 or 0.7 exactly.
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = tuple(
    [k * 0.1 for k in range(6)] + [1.0 - (10 - k) * 0.1 for k in range(6, 11)]
)




def voc07_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """11-point interpolated AP of the PASCAL VOC2007 devkit (``VOCevalcls.m``).

    ``labels``: 1 positive, -1 negative, 0 difficult (ignored). Precision at recall >= t is
    maximised for the 11 thresholds of ``VOC07_RECALL_THRESHOLDS`` and averaged (summed as
    ``ap += p/11`` in the devkit's order). Returns nan when there is no positive (the devkit
    returns 0 there; a mean over classes skips the class instead).
    """
    hits = _ranked_binary(scores, labels)
    if hits is None:
        return float("nan")
    tp = np.cumsum(hits, dtype=np.float64)
    fp = np.cumsum(~hits, dtype=np.float64)
    rec = tp / tp[-1]
    prec = tp / (tp + fp)
    ap = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        above = prec[rec >= t]
        p = float(above.max()) if above.size else 0.0
        ap = ap + p / 11
    return float(ap)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP: mean over positives of the precision at each positive's rank.

    Same labels as ``voc07_ap`` (0 ignored). Equal to ``sklearn.metrics.
    average_precision_score`` when scores have no ties; tied scores keep their input order
    (stable sort) instead of sklearn's grouping into one threshold. nan without positives.
    """
    hits = _ranked_binary(scores, labels)
    if hits is None:
        return float("nan")
    ranks = np.flatnonzero(hits) + 1.0  # 1-based rank of each positive
    precision_at_hits = np.arange(1, len(ranks) + 1) / ranks
    return float(precision_at_hits.mean())


def _label_matrix(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim == 1:
        s = s[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim != 2 or y.ndim != 2:
        raise MetricInputError(f"scores and labels must be (n, K); got {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise MetricInputError(f"scores shape {s.shape} does not match labels shape {y.shape}")
    return s, y


def _column(metric: Callable[[np.ndarray, np.ndarray], float], s: np.ndarray, y: np.ndarray, k: int) -> float:
    try:
        return metric(s[:, k], y[:, k])
    except MetricInputError as exc:
        raise MetricInputError(f"column {k}: {exc}") from None


def _mean_over_columns(values: list[float], what: str) -> float:
    return mean_leaving_out_nan(
        values, lambda n, total, which: f"{n} of {total} columns left out of the mean {what} "
        f"(no positive or no negative example): columns {which}")


def mean_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    ap: Callable[[np.ndarray, np.ndarray], float] = average_precision,
    per_class: list[float] | None = None,
) -> float:
    """Mean of ``ap`` over the K columns of (n, K) ``scores`` and {1,-1,0} ``labels``.

    Columns without a positive are skipped with a ``MetricWarning`` (nan if all are).
    Pass a list as ``per_class`` to receive each column's AP (nan for skipped columns).
    """
    s, y = _label_matrix(scores, labels)
    aps = [_column(ap, s, y, k) for k in range(s.shape[1])]
    if per_class is not None:
        per_class.extend(aps)
    return _mean_over_columns(aps, "AP")


def _class_pair(y_true: np.ndarray, y_pred: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class vectors of one non-empty length."""
    t = _class_vector(y_true, "y_true")
    p = _class_vector(y_pred, "y_pred")
    if len(t) != len(p):
        raise MetricInputError(f"y_true has {len(t)} entries but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricInputError(f"{what} of an empty set is undefined")
    return t, p


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the true class."""
    t, p = _class_pair(y_true, y_pred, "accuracy")
    return float(np.mean(t == p))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, accuracy of each): for every class present in ``y_true``, the fraction of
    its images predicted as that class (its recall)."""
    t, p = _class_pair(y_true, y_pred, "mean class accuracy")
    classes, inverse, counts = np.unique(t, return_inverse=True, return_counts=True)
    correct = np.bincount(inverse, weights=(t == p).astype(np.float64), minlength=len(classes))
    return classes, correct / counts


def mean_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of per-class accuracy (MIT Indoor 67,
    fine-grained protocols). Classes that only occur in ``y_pred`` do not enter the mean."""
    return float(per_class_accuracy(y_true, y_pred)[1].mean())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, labels 1/-1 (0 ignored); tied scores count one half
    (Mann-Whitney U), as ``sklearn.metrics.roc_auc_score``. nan without positives or
    without negatives."""
    from scipy.stats import rankdata

    s = _scores_1d(scores)
    y = _binary_labels(labels, len(s))
    keep = y != 0
    s, y = s[keep], y[keep]
    n_pos = int((y > 0).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y > 0].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mean_auc(scores: np.ndarray, labels: np.ndarray, per_class: list[float] | None = None) -> float:
    """Mean over attributes (columns) of ROC AUC, labels 1/-1/0 as in ``roc_auc``.

    Columns lacking positives or negatives are skipped with a ``MetricWarning``.
    """
    s, y = _label_matrix(scores, labels)
    aucs = [_column(roc_auc, s, y, k) for k in range(s.shape[1])]
    if per_class is not None:
        per_class.extend(aucs)
    return _mean_over_columns(aucs, "AUC")


