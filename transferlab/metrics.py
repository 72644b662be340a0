"""Every benchmark's metric, computed exactly as the benchmark's own evaluation kit does.

Plain NumPy in, Python float out. Each function names the kit it reproduces; where the kit
has a quirk (floating-point thresholds, tie order, empty ground truth) the quirk is kept and
written down here, because a number that differs from the published protocol is not
comparable with published results.

Label conventions (as in ``transferlab.data.base.Split``): binary / multi-label labels are
1 = positive, -1 = negative, 0 = difficult or unknown (removed before ranking).

Ties: classification scores are ranked with a *stable* sort by descending score, so tied
images keep their input order, as MATLAB's ``sort(-scores)`` in the VOC devkit does.
Retrieval metrics take an explicit ranking, so ties never arise there.

Empty ground truth: a single AP with no positive returns ``nan``; the mean over classes or
queries skips those (as the revisited Oxford/Paris kit skips queries without positives) and
warns with ``MetricWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from transferlab.errors import TransferlabError

__all__ = [
    "MetricInputError",
    "MetricWarning",
    "VOC07_RECALL_THRESHOLDS",
    "voc07_ap",
    "average_precision",
    "mean_average_precision",
    "mean_class_accuracy",
    "per_class_accuracy",
    "accuracy",
    "roc_auc",
    "mean_auc",
    "retrieval_ap",
    "retrieval_aps",
    "mean_retrieval_ap",
    "mean_over_queries",
    "revisited_aps",
    "revisited_map",
    "holidays_map",
    "ukb_score",
]


class MetricInputError(TransferlabError, ValueError):
    """Metric inputs with the wrong shape, length, values or NaNs (also a ValueError)."""


class MetricWarning(UserWarning):
    """A class or query was left out of a mean (no positives), or ground truth overlaps."""


# The 11 recall thresholds of VOC2007 ``for t=0:0.1:1``, as the doubles MATLAB's colon
# operator produces: the first half is a + k*d, the second half b - (n-k)*d (MathWorks
# solution 1-4FLI96, "How does the COLON operator work?"). So t[3] = 3*0.1 =
# 0.30000000000000004 but t[6] = 1 - 4*0.1 == 0.6 and t[7] = 1 - 3*0.1 == 0.7, whereas the
# common Python port ``np.arange(0., 1.1, 0.1)`` has 0.6000000000000001 and
# 0.7000000000000001. The two differ only when a recall equals 0.6 or 0.7 exactly.
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = tuple(
    [k * 0.1 for k in range(6)] + [1.0 - (10 - k) * 0.1 for k in range(6, 11)]
)


# ----------------------------------------------------------------------------- validation


def _scores_1d(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        bad = np.flatnonzero(np.isnan(arr))
        raise MetricInputError(f"{name} contain NaN at {len(bad)} position(s), first {bad[0]}")
    return arr


def _binary_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise MetricInputError(f"{name} has {len(arr)} entries but scores has {n}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise MetricInputError(f"{name} contain NaN")
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    bad = ~np.isin(arr, (1, -1, 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MetricInputError(
            f"{name} must be 1 (positive), -1 (negative) or 0 (ignored); entry {i} is {arr[i].item()!r}"
        )
    return arr.astype(np.int8)


def _ranked_binary(scores: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Labels (1/-1) in descending-score order, ignored entries removed; None if no positive."""
    s = _scores_1d(scores)
    y = _binary_labels(labels, len(s))
    keep = y != 0
    s, y = s[keep], y[keep]
    if not (y > 0).any():
        return None
    # Stable sort of -score == MATLAB sort(-out): tied scores keep their input order.
    order = np.argsort(-s, kind="stable")
    return y[order] > 0


def _class_vector(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise MetricInputError(f"{name} contain NaN")
        if not np.all(arr == np.round(arr)):
            raise MetricInputError(f"{name} must be integer class indices")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "biuUSO":
        raise MetricInputError(f"{name} must hold class labels, got dtype {arr.dtype}")
    return arr


def _index_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(() if values is None else values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be a 1-D list of database indices, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise MetricInputError(f"{name} must hold integer database indices, got dtype {arr.dtype}")
    if (arr < 0).any():
        raise MetricInputError(f"{name} holds a negative database index ({arr.min()})")
    return arr.astype(np.int64, copy=False)


def _ranking_matrix(ranking: np.ndarray, name: str = "ranking") -> np.ndarray:
    arr = np.asarray(ranking)
    if arr.ndim != 2:
        raise MetricInputError(f"{name} must be 2-D (n_queries, n_ranked), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise MetricInputError(f"{name} must hold integer database indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise MetricInputError(f"{name} holds a negative database index ({arr.min()})")
    return arr.astype(np.int64, copy=False)


# ------------------------------------------------------------------ classification metrics


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


def mean_leaving_out_nan(values, message: Callable[[int, int, list[int]], str]) -> float:
    """Mean of the non-nan values, with a ``MetricWarning`` saying (via ``message(count,
    total, first_ten_indices)``) what was left out; nan when everything was."""
    arr = np.asarray(values, dtype=np.float64)
    skipped = np.flatnonzero(np.isnan(arr))
    if len(skipped):
        warnings.warn(message(len(skipped), len(arr), skipped[:10].tolist()), MetricWarning, stacklevel=4)
    if len(skipped) == len(arr):
        return float("nan")
    return float(np.nanmean(arr))


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


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the true class."""
    t = _class_vector(y_true, "y_true")
    p = _class_vector(y_pred, "y_pred")
    if len(t) != len(p):
        raise MetricInputError(f"y_true has {len(t)} entries but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricInputError("accuracy of an empty set is undefined")
    return float(np.mean(t == p))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, accuracy of each): for every class present in ``y_true``, the fraction of
    its images predicted as that class (its recall)."""
    t = _class_vector(y_true, "y_true")
    p = _class_vector(y_pred, "y_pred")
    if len(t) != len(p):
        raise MetricInputError(f"y_true has {len(t)} entries but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricInputError("mean class accuracy of an empty set is undefined")
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


# ----------------------------------------------------------------------- retrieval metrics


def _trapezoid_ap(ranks: np.ndarray, n_positives: int) -> float:
    """AP from the sorted 0-based ranks of the retrieved positives (junk already removed):
    the trapezoids of Oxford's compute_ap.cpp / revisitop's compute_ap / Holidays'
    score_ap_from_ranks_1. Left edge precision j/rank (1 at rank 0), right edge
    (j+1)/(rank+1), width 1/n_positives."""
    if len(ranks) == 0:
        return 0.0
    j = np.arange(len(ranks), dtype=np.float64)
    r = ranks.astype(np.float64)
    p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum((p0 + p1) * ((1.0 / n_positives) / 2.0)))


class _RankIndex:
    """Position of every database item in each query's ranking, built once per query so
    any number of ground-truth variants (Easy/Medium/Hard) is scored without a search."""

    def __init__(self, ranking: np.ndarray, db_size: int | None = None):
        self.ranking = ranking
        self.n_ranked = ranking.shape[1]
        top = int(ranking.max()) + 1 if ranking.size else 0
        self.db_size = max(top, db_size or 0)
        self._row = -1
        self._pos = np.empty(0, dtype=np.int64)

    def positions(self, q: int) -> np.ndarray:
        if self._row != q:
            pos = np.full(self.db_size, self.n_ranked, dtype=np.int64)  # n_ranked = "not ranked"
            row = self.ranking[q]
            pos[row] = np.arange(self.n_ranked)
            if self.n_ranked and not np.array_equal(pos[row], np.arange(self.n_ranked)):
                dup = row[pos[row] != np.arange(self.n_ranked)][0]
                raise MetricInputError(f"ranking of query {q} lists database index {dup} twice")
            self._row, self._pos = q, pos
        return self._pos

    def ap(self, q: int, positives: np.ndarray, junk: np.ndarray) -> float:
        """AP of query q, exactly as revisitop's compute_map: positives' positions are lowered
        by the number of junk positions strictly before them; unranked positives count as
        missed (recall step still 1/len(positives))."""
        if len(positives) == 0:
            return float("nan")
        pos = self.positions(q)

        def ranked(idx: np.ndarray) -> np.ndarray:
            # unique positions: an id listed twice (Easy's junk = junk + hard can repeat one)
            # is one ranked item, as the kit's np.in1d over the ranking counts it
            inside = idx[idx < self.db_size]
            p = pos[inside]
            return np.unique(p[p < self.n_ranked])

        p_ranks = ranked(positives)
        j_ranks = ranked(junk)
        if len(j_ranks):
            p_ranks = p_ranks - np.searchsorted(j_ranks, p_ranks, side="left")
        return _trapezoid_ap(p_ranks, len(positives))


def _check_gt(positives: np.ndarray, junk: np.ndarray, where: str) -> None:
    if len(np.unique(positives)) != len(positives):
        raise MetricInputError(f"{where}: positives list a database index more than once")
    if len(junk) and len(positives):
        both = np.intersect1d(positives, junk)
        if len(both):
            warnings.warn(
                f"{where}: {len(both)} database index(es) are both positive and junk "
                f"(first {both[0]}); scored as the revisited Oxford/Paris kit does",
                MetricWarning,
                stacklevel=4,
            )


def retrieval_ap(ranking: np.ndarray, positives: Sequence[int] | np.ndarray, junk: Sequence[int] | np.ndarray = ()) -> float:
    """AP of one query (Oxford/Paris protocol, ``compute_ap.cpp``).

    ``ranking``: database indices, best first (may be a truncated top-k list; positives
    missing from it count as not retrieved). ``junk`` indices are removed before scoring.
    Precision is integrated over recall with the trapezoidal rule. Returns nan when
    ``positives`` is empty (such queries are left out of every mean). Positives and junk
    should be disjoint; if not, a ``MetricWarning`` is issued and the revisited kit's rule
    applies (an overlapping index counts as positive, and as junk for later positives).
    """
    row = np.asarray(ranking)
    if row.ndim != 1:
        raise MetricInputError(f"ranking must be 1-D for one query, got shape {row.shape}")
    pos = _index_array(positives, "positives")
    jnk = _index_array(junk, "junk")
    _check_gt(pos, jnk, "retrieval_ap")
    index = _RankIndex(_ranking_matrix(row[None, :]))
    return index.ap(0, pos, jnk)


def retrieval_aps(
    ranking: np.ndarray,
    positives: Sequence[Sequence[int] | np.ndarray],
    junk: Sequence[Sequence[int] | np.ndarray] | None = None,
    db_size: int | None = None,
) -> np.ndarray:
    """Per-query ``retrieval_ap`` for a (n_queries, n_ranked) ranking; nan where a query has
    no positive. Vectorised per query (one scatter of the ranking), so 70 queries over a
    100k database take a fraction of a second."""
    r = _ranking_matrix(ranking)
    n_q = r.shape[0]
    if len(positives) != n_q:
        raise MetricInputError(f"ranking has {n_q} queries but {len(positives)} positive lists were given")
    if junk is not None and len(junk) != n_q:
        raise MetricInputError(f"ranking has {n_q} queries but {len(junk)} junk lists were given")
    index = _RankIndex(r, db_size)
    aps = np.empty(n_q, dtype=np.float64)
    for q in range(n_q):
        pos = _index_array(positives[q], f"positives of query {q}")
        jnk = _index_array(junk[q] if junk is not None else (), f"junk of query {q}")
        _check_gt(pos, jnk, f"query {q}")
        aps[q] = index.ap(q, pos, jnk)
    return aps


def mean_over_queries(aps: np.ndarray, what: str = "the mAP") -> float:
    """Mean of per-query values, leaving out nan (queries without positives) with a
    ``MetricWarning``, as revisitop's compute_map does; nan if every query is left out."""
    return mean_leaving_out_nan(
        aps, lambda n, total, which: f"{n} of {total} queries have no positive and are left out "
        f"of {what} (queries {which})")


def mean_retrieval_ap(
    ranking: np.ndarray,
    positives: Sequence[Sequence[int] | np.ndarray],
    junk: Sequence[Sequence[int] | np.ndarray] | None = None,
    db_size: int | None = None,
) -> float:
    """Oxford5k/Paris6k/Sculptures mAP: mean ``retrieval_ap`` over queries with a positive."""
    return mean_over_queries(retrieval_aps(ranking, positives, junk, db_size), "the mAP")


_REVISITED_SETUPS = ("easy", "medium", "hard")


def _gnd_field(entry: Mapping[str, object], key: str, q: int, required: bool) -> np.ndarray:
    if key not in entry:
        if required:
            raise MetricInputError(f"gnd[{q}] has no {key!r} list (keys: {', '.join(map(str, entry))})")
        return np.zeros(0, dtype=np.int64)
    return _index_array(entry[key], f"gnd[{q}][{key!r}]")


def revisited_aps(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]]) -> dict[str, np.ndarray]:
    """Per-query APs of the revisited Oxford/Paris protocol (Radenovic et al. CVPR 2018,
    revisitop ``example_evaluate.py``): Easy scores positives=easy with junk=junk+hard;
    Medium positives=easy+hard, junk=junk; Hard positives=hard, junk=junk+easy.
    ``ranks`` is (n_db, n_queries), as the kit's ``argsort(-sim, axis=0)``; a missing
    ``junk`` key is an empty list, as in the kit. nan for a query without positives."""
    r = np.asarray(ranks)
    if r.ndim != 2:
        raise MetricInputError(f"ranks must be 2-D (n_db, n_queries), got shape {r.shape}")
    if r.shape[1] != len(gnd):
        raise MetricInputError(f"ranks has {r.shape[1]} query columns but gnd has {len(gnd)} entries")
    index = _RankIndex(_ranking_matrix(r.T, "ranks"))
    out = {s: np.empty(len(gnd), dtype=np.float64) for s in _REVISITED_SETUPS}
    for q, entry in enumerate(gnd):
        if not isinstance(entry, Mapping):
            raise MetricInputError(f"gnd[{q}] must be a dict with 'easy', 'hard', 'junk'")
        easy = _gnd_field(entry, "easy", q, required=True)
        hard = _gnd_field(entry, "hard", q, required=True)
        junk = _gnd_field(entry, "junk", q, required=False)
        setups = {
            "easy": (easy, np.concatenate([junk, hard])),
            "medium": (np.concatenate([easy, hard]), junk),
            "hard": (hard, np.concatenate([junk, easy])),
        }
        for name, (pos, jnk) in setups.items():
            _check_gt(pos, jnk, f"gnd[{q}] ({name})")
            out[name][q] = index.ap(q, pos, jnk)
    return out


def revisited_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Revisited Oxford/Paris mAP for the Easy, Medium and Hard setups, each in [0, 1];
    queries without positives in a setup are left out of that setup's mean (kit rule)."""
    aps = revisited_aps(ranks, gnd)
    return {name: mean_over_queries(aps[name], f"the {name} mAP") for name in _REVISITED_SETUPS}


def holidays_map(
    ranking: np.ndarray,
    positives: Sequence[Sequence[int] | np.ndarray],
    query_db_indices: Sequence[int | None] | None = None,
) -> float:
    """INRIA Holidays mAP (Jegou's ``holidays_map.py``): the query image itself is dropped
    from its result list (later ranks shift up by one), then the trapezoid AP of
    ``score_ap_from_ranks_1`` with the query's other group members as positives; mean over
    queries. ``query_db_indices[q]`` is query q's own database index (None: not in the db)."""
    r = _ranking_matrix(ranking)
    if query_db_indices is None:
        query_db_indices = [None] * r.shape[0]
    if len(query_db_indices) != r.shape[0]:
        raise MetricInputError(
            f"ranking has {r.shape[0]} queries but {len(query_db_indices)} query indices were given"
        )
    junk = [np.zeros(0, np.int64) if i is None else np.array([int(i)]) for i in query_db_indices]
    return mean_over_queries(retrieval_aps(r, positives, junk), "the Holidays mAP")


def ukb_score(ranking: np.ndarray, groups: np.ndarray, query_groups: np.ndarray | None = None) -> float:
    """UKBench N-S score (Nister & Stewenius): mean number of images of the query's group
    among its top 4 results, the query itself included; in [0, 4].

    ``ranking`` (n_queries, >=4) database indices best first; ``groups`` the group id of each
    database image. By default query q is database image q (UKBench uses every image as a
    query); otherwise pass each query's group as ``query_groups``.
    """
    r = _ranking_matrix(ranking)
    g = np.asarray(groups)
    if g.ndim != 1:
        raise MetricInputError(f"groups must be 1-D (one id per database image), got shape {g.shape}")
    if r.shape[1] < 4:
        raise MetricInputError(f"ukb_score needs the top 4 of each ranking, got {r.shape[1]} columns")
    if r.size and r.max() >= len(g):
        raise MetricInputError(f"ranking holds database index {r.max()} but groups has {len(g)} entries")
    if query_groups is None:
        if r.shape[0] > len(g):
            raise MetricInputError(
                f"{r.shape[0]} queries but {len(g)} database images; pass query_groups"
            )
        qg = g[: r.shape[0]]
    else:
        qg = np.asarray(query_groups)
        if qg.shape != (r.shape[0],):
            raise MetricInputError(f"query_groups must have shape ({r.shape[0]},), got {qg.shape}")
    if r.shape[0] == 0:
        raise MetricInputError("ukb_score of zero queries is undefined")
    hits = g[r[:, :4]] == qg[:, None]
    return float(hits.sum(axis=1).mean())
