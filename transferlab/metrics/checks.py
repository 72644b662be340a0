"""Input checks and NaN-skipping means shared by every metric (one clear error per bad input)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from transferlab.errors import TransferlabError


class MetricInputError(TransferlabError, ValueError):
    """Metric inputs with the wrong shape, length, values or NaNs (also a ValueError)."""


class MetricWarning(UserWarning):
    """A class or query was left out of a mean (no positives), or ground truth overlaps."""




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

