"""What every transferability score and task distance checks first: feature matrices and
probabilities that are finite and of the right shape, labels turned into one or more
classification problems (multi-label columns scored as binary tasks), and degenerate input
answered with NaN and a warning instead of a silent number."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from transferlab.errors import TransferlabError


class TransferabilityWarning(UserWarning):
    """A score could not be computed meaningfully (returned NaN) or skipped part of the input."""


@dataclass(frozen=True)
class LabelProblem:
    """One classification problem to score: which rows take part and their class codes 0..C-1.

    A single-label task gives one problem over all rows; a multi-label task gives one binary
    problem (0 = negative, 1 = positive) per usable label column, over the rows where that
    column is not 0.
    """

    name: str
    rows: np.ndarray | None  # None = every row
    codes: np.ndarray  # int64, values 0..n_classes-1
    n_classes: int
    multilabel: bool = False


# ---------------------------------------------------------------- input validation


def check_matrix(values: object, name: str) -> np.ndarray:
    """A finite 2-D float64 array, or a TransferlabError saying what is wrong."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise TransferlabError(f"{name} must be a 2-D array (n, d); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise TransferlabError(f"{name} is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TransferlabError(f"{name} must hold real numbers; got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise TransferlabError(
            f"{name} holds {int(bad.sum())} NaN/inf values (first in row {int(rows[0])}, "
            f"{len(rows)} rows affected); re-extract or drop those images"
        )
    return array


def check_probabilities(values: object, name: str = "source_probs") -> np.ndarray:
    """Rows of a softmax: non-negative, summing to 1, at least two source classes."""
    probs = check_matrix(values, name)
    if probs.shape[1] < 2:
        raise TransferlabError(f"{name} needs at least two source classes; got {probs.shape[1]}")
    if (probs < 0).any():
        raise TransferlabError(f"{name} holds negative values: pass softmax probabilities, not logits")
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > 1e-3:
        raise TransferlabError(
            f"{name} row {worst} sums to {sums[worst]:.6g}, not 1: pass softmax probabilities "
            f"over the source classes, not logits or scores"
        )
    return probs / sums[:, None]


def is_constant(matrix: np.ndarray) -> bool:
    """True when every row is the same vector (up to rounding): the input has no variance."""
    spread = np.ptp(matrix, axis=0).max()
    return bool(spread <= 1e-12 * max(1.0, float(np.abs(matrix).max())))


def nan_with_warning(score: str, problem: str) -> float:
    warnings.warn(f"{score}: {problem}; returning NaN", TransferabilityWarning, stacklevel=3)
    return math.nan


def label_problems(
    labels: object, n: int, num_classes: int | None = None, *, allow_multilabel: bool = True, score: str = "score"
) -> list[LabelProblem]:
    """Validate labels against ``n`` rows and split them into the problems a score averages over."""
    array = np.asarray(labels)
    if array.ndim == 0 or array.shape[0] != n:
        raise TransferlabError(f"{score}: labels have shape {array.shape} but there are {n} images")
    if array.ndim == 1:
        return [_single_label_problem(array, num_classes, score)]
    if array.ndim == 2:
        if not allow_multilabel:
            raise TransferlabError(
                f"{score} needs single-label labels of shape (n,); got multi-label shape {array.shape}"
            )
        return _multilabel_problems(array, score)
    raise TransferlabError(f"{score}: labels must be (n,) or (n, K); got shape {array.shape}")


def _single_label_problem(array: np.ndarray, num_classes: int | None, score: str) -> LabelProblem:
    n = len(array)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            raise TransferlabError(f"{score}: single-label labels must be integer class indices")
        array = array.astype(np.int64)
    if num_classes is not None:
        if array.dtype.kind not in "iu":
            raise TransferlabError(f"{score}: with num_classes, labels must be integer class indices")
        if n < num_classes:
            raise TransferlabError(f"{score}: fewer images ({n}) than classes ({num_classes})")
        outside = (array < 0) | (array >= num_classes)
        if outside.any():
            first = int(np.nonzero(outside)[0][0])
            raise TransferlabError(
                f"{score}: label {array[first]} at row {first} is outside 0..{num_classes - 1}"
            )
    classes, codes = np.unique(array, return_inverse=True)
    if len(classes) < 2:
        raise TransferlabError(
            f"{score}: labels hold a single class ({classes[0]!r}); a transferability score "
            f"compares classes and needs at least two"
        )
    if n <= len(classes):
        raise TransferlabError(
            f"{score}: {n} images for {len(classes)} classes; with one image per class nothing "
            f"can be estimated (need more images than classes)"
        )
    if num_classes is not None and len(classes) < num_classes:
        warnings.warn(
            f"{score}: {num_classes - len(classes)} of {num_classes} classes have no image here; "
            f"the score covers the {len(classes)} present",
            TransferabilityWarning,
            stacklevel=4,
        )
    return LabelProblem("", None, codes.astype(np.int64), len(classes))


def _multilabel_problems(array: np.ndarray, score: str) -> list[LabelProblem]:
    if not np.isin(array, (-1, 0, 1)).all():
        raise TransferlabError(f"{score}: multi-label labels must be 1 (positive), -1 (negative) or 0 (ignored)")
    problems, skipped = [], []
    for column in range(array.shape[1]):
        rows = np.nonzero(array[:, column] != 0)[0]
        codes = (array[rows, column] == 1).astype(np.int64)
        positives = int(codes.sum())
        if positives == 0 or positives == len(rows):
            skipped.append(column)
            continue
        problems.append(LabelProblem(f"label {column}", rows, codes, 2, multilabel=True))
    if not problems:
        raise TransferlabError(
            f"{score}: no label column has both positive and negative images; nothing to score"
        )
    if skipped:
        shown = ", ".join(str(c) for c in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"{score}: {len(skipped)} label columns have only positives or only negatives "
            f"(columns {shown}); they are left out of the average",
            TransferabilityWarning,
            stacklevel=4,
        )
    return problems


def take_rows(matrix: np.ndarray, problem: LabelProblem) -> np.ndarray:
    return matrix if problem.rows is None else matrix[problem.rows]
