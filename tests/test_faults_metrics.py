"""Metric edge cases found against the official kits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from transferlab.analysis.transferability import logme
from transferlab.metrics import retrieval_ap, retrieval_aps, revisited_map


def _revisitop_compute_ap(pos_positions, n_positives):
    """revisitop's compute_ap, transcribed (evaluate.py)."""
    ap = 0.0
    recall_step = 1.0 / n_positives
    for j, rank in enumerate(pos_positions):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_1 + precision_0) * recall_step / 2.0
    return ap


def _revisitop_one(ranking, positives, junk):
    """revisitop's compute_map for one query: np.in1d over the ranking, so a junk id listed
    twice is one junk position."""
    ranking = np.asarray(ranking)
    pos = np.arange(len(ranking))[np.isin(ranking, positives)]
    jnk = np.arange(len(ranking))[np.isin(ranking, junk)]
    k = ij = 0
    for ip in range(len(pos)):
        while ij < len(jnk) and pos[ip] > jnk[ij]:
            k += 1
            ij += 1
        pos[ip] -= k
    return _revisitop_compute_ap(pos, len(positives))


def test_junk_listed_twice_counts_once():
    assert retrieval_ap(np.array([0, 1, 2, 3]), [2], [1, 1]) == pytest.approx(0.25)
    assert _revisitop_one([0, 1, 2, 3], [2], [1, 1]) == pytest.approx(0.25)


def test_per_query_aps_with_repeated_junk():
    ranking = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    aps = retrieval_aps(ranking, [[2, 4], [0]], [[1, 1, 3], [3, 3, 2]])
    assert aps[0] == pytest.approx(_revisitop_one(ranking[0], [2, 4], [1, 3]))
    assert aps[1] == pytest.approx(_revisitop_one(ranking[1], [0], [3, 2]))


def test_revisited_easy_where_junk_and_hard_repeat_an_id():
    rng = np.random.default_rng(3)
    ranks = np.stack([rng.permutation(30) for _ in range(4)], axis=1)  # (n_db, n_queries)
    gnd = [{"easy": [1, 5], "hard": [7, 9], "junk": [7, 11]} for _ in range(4)]  # 7: junk and hard
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        easy = revisited_map(ranks, gnd)["easy"]
    expected = np.mean([_revisitop_one(ranks[:, q], [1, 5], [7, 11, 7, 9]) for q in range(4)])
    assert easy == pytest.approx(expected)


def test_logme_with_more_dims_than_images_is_finite():
    rng = np.random.default_rng(27)
    y = np.arange(11) % 3
    F = rng.normal(size=(3, 110))[y] + rng.normal(size=(11, 110))
    value = logme(F, y)
    assert np.isfinite(value)


@pytest.mark.parametrize("seed", range(8))
def test_logme_never_raises_when_n_is_below_d(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 14))
    y = np.arange(n) % 3
    F = rng.normal(size=(3, 10 * n))[y] * rng.uniform(0.5, 5) + rng.normal(size=(n, 10 * n))
    value = logme(F, y)
    assert np.isfinite(value) or np.isnan(value)
