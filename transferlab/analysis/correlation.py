"""Spearman rank correlation with scipy's p-value and a seeded bootstrap interval.

Shared by the factor-vs-distance analysis (report) and ``transferlab select`` (study), so it
lives below both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transferlab.errors import TransferlabError

MIN_TASKS = 3
N_BOOTSTRAP = 2000

@dataclass
class Correlation:
    """Spearman's rho of (x, y) with its p-value and a bootstrap interval, or NaN and why."""

    rho: float
    p_value: float
    low: float
    high: float
    n: int
    status: str  # "ok", "not enough tasks", "no variation"
    note: str = ""
    valid_resamples: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as Spearman uses."""
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def spearman(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
    n_boot: int = N_BOOTSTRAP, seed: int = 0, min_n: int = MIN_TASKS,
    unit: str = "tasks",
) -> Correlation:
    """Spearman's rho (ties: average ranks), scipy's p-value (two-sided, t approximation) and
    the percentile 95% interval of rho over ``n_boot`` seeded resamples of the pairs.

    Resamples in which x or y is constant have no rho and are left out (``valid_resamples``).
    Fewer than ``min_n`` pairs: status "not enough tasks"; x or y constant: "no variation";
    both with NaN numbers, never a silent value.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise TransferlabError(f"spearman: x and y must be 1-D of one length; got {xs.shape} and {ys.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise TransferlabError("spearman: x and y must be finite (drop the missing pairs first)")
    n = len(xs)
    nan = math.nan
    if n < min_n:
        return Correlation(nan, nan, nan, nan, n, "not enough tasks" if unit == "tasks" else f"not enough {unit}",
                           f"{n} {unit}; a rank correlation needs at least {min_n}")
    constant = [f"{name} ({v[0]:g})" for name, v in (("distance" if unit == "tasks" else "x", xs), ("value", ys))
                if np.ptp(v) == 0]
    if constant:
        return Correlation(nan, nan, nan, nan, n, "no variation",
                           f"all {n} {unit} have the same {' and the same '.join(constant)}")
    from scipy.stats import spearmanr

    result = spearmanr(xs, ys)
    rho, p_value = float(result.statistic), float(result.pvalue)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_boot, n))
    bx, by = xs[picks], ys[picks]
    usable = (np.ptp(bx, axis=1) > 0) & (np.ptp(by, axis=1) > 0)
    rx, ry = _ranks(bx[usable]), _ranks(by[usable])
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    boot = (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    low, high = (float(q) for q in np.percentile(boot, [2.5, 97.5])) if len(boot) else (nan, nan)
    note = "" if usable.sum() >= n_boot / 2 else f"only {int(usable.sum())} of {n_boot} resamples vary"
    return Correlation(rho, p_value, low, high, n, "ok", note, int(usable.sum()))
