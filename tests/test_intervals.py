"""Bootstrap intervals: the vectorised metrics equal the task's own, coverage is 95%, pairs pair."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.analysis import intervals as I
from transferlab.evaluate import evaluate_classification


def _task(rng, n=120, k=5, multilabel=False):
    if multilabel:
        labels = np.where(rng.random((n, k)) < 0.3, 1, -1).astype(np.int8)
        labels[rng.random((n, k)) < 0.05] = 0  # difficult
        scores = labels * 0.8 + rng.normal(size=(n, k))
    else:
        labels = rng.integers(0, k, n)
        scores = rng.normal(size=(n, k))
        scores[np.arange(n), labels] += 1.0
    return labels, scores.astype(np.float32)


@pytest.mark.parametrize("metric", ["accuracy", "mean_class_accuracy", "map", "voc07_map", "mean_auc"])
def test_point_value_is_the_tasks_metric(metric):
    rng = np.random.default_rng(1)
    multilabel = metric in ("map", "voc07_map", "mean_auc")
    labels, scores = _task(rng, multilabel=multilabel)
    items = I.item_data(metric, labels, scores)
    expected = evaluate_classification(metric, labels, scores)[metric]
    assert I.point_value(metric, items) == pytest.approx(expected, abs=1e-9)


def test_auc_handles_ties_like_the_metric():
    rng = np.random.default_rng(2)
    labels, scores = _task(rng, multilabel=True)
    scores = np.round(scores, 0)  # many ties
    items = I.item_data("mean_auc", labels, scores)
    assert I.point_value("mean_auc", items) == pytest.approx(
        evaluate_classification("mean_auc", labels, scores)["mean_auc"]
    )


def test_per_query_mean_skips_undefined_queries():
    items = I.item_data("oxford_map", None, per_query=np.array([0.5, np.nan, 1.0]))
    assert I.point_value("oxford_map", items) == pytest.approx(0.75)


def test_coverage_is_95_percent_over_300_draws():
    """Accuracy of a classifier that is right with probability 0.7 on 200 test images: the
    interval must cover 0.7 in 95% +- 4% of 300 independent test sets."""
    rng = np.random.default_rng(0)
    true, n, covered = 0.7, 200, 0
    for draw in range(300):
        correct = rng.random(n) < true
        labels = rng.integers(0, 4, n)
        scores = np.zeros((n, 4), np.float32)
        wrong = (labels + 1) % 4
        scores[np.arange(n), np.where(correct, labels, wrong)] = 1.0
        interval = I.row_interval("accuracy", I.item_data("accuracy", labels, scores), "sim", seed=draw)
        covered += interval.low <= true <= interval.high
    assert 0.91 <= covered / 300 <= 0.99


def test_mean_class_accuracy_coverage():
    """Per-class means resampled over images: coverage of a known per-class rate (0.8 everywhere)."""
    rng = np.random.default_rng(5)
    n, k, covered = 240, 6, 0
    for draw in range(300):
        labels = rng.integers(0, k, n)
        correct = rng.random(n) < 0.8
        scores = np.zeros((n, k), np.float32)
        scores[np.arange(n), np.where(correct, labels, (labels + 1) % k)] = 1.0
        iv = I.row_interval("mean_class_accuracy", I.item_data("mean_class_accuracy", labels, scores), "s", draw)
        covered += iv.low <= 0.8 <= iv.high
    assert 0.91 <= covered / 300 <= 0.99


def test_resamples_are_seeded_and_shared_by_a_task():
    a = I.resample_counts(50, I.resample_seed("digits", 50, 0))
    b = I.resample_counts(50, I.resample_seed("digits", 50, 0))
    c = I.resample_counts(50, I.resample_seed("digits", 50, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (I.N_RESAMPLES, 50) and (a.sum(1) == 50).all()


def test_paired_difference_is_narrower_than_either_interval():
    """Two classifiers that agree on most images: the paired interval of their difference is
    much narrower than the intervals of the values, and a constant 0 difference is not
    measurable."""
    rng = np.random.default_rng(3)
    n = 300
    labels = rng.integers(0, 3, n)
    correct_a = rng.random(n) < 0.75
    correct_b = correct_a.copy()
    flip = rng.choice(n, 15, replace=False)
    correct_b[flip] = True  # b fixes up to 15 of a's mistakes
    rows = []
    for correct in (correct_a, correct_b):
        scores = np.zeros((n, 3), np.float32)
        scores[np.arange(n), np.where(correct, labels, (labels + 1) % 3)] = 1
        rows.append(I.row_interval("accuracy", I.item_data("accuracy", labels, scores), "t"))
    d = I.difference(rows[1].value, rows[0].value, rows[1].replicates, rows[0].replicates)
    assert d.value > 0 and d.low >= 0 and (d.high - d.low) < (rows[0].high - rows[0].low) / 2
    same = I.difference(rows[0].value, rows[0].value, rows[0].replicates, rows[0].replicates)
    assert same.low == same.high == 0 and not same.measurable


@pytest.fixture
def user_metrics(monkeypatch):
    """Two metrics a user registers: accuracy under another name (no vectorised form here) and
    a retrieval mean over queries."""
    from transferlab import evaluate as E

    def my_accuracy(y, s, k):
        value = float(np.mean(np.argmax(s, axis=1) == y))
        return {"my_accuracy": value}, {"my_accuracy": []}

    for spec in (E.MetricSpec("my_accuracy", "classification", "accuracy, again", my_accuracy),
                 E.MetricSpec("my_map", "retrieval", "mean AP over queries", lambda *a: {})):
        monkeypatch.setitem(E.METRICS, spec.name, spec)
        monkeypatch.setitem(E.PROTOCOLS, spec.name, spec.protocol)


def test_a_registered_metric_gets_the_same_interval_as_its_built_in_twin(user_metrics):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 120)
    scores = rng.normal(size=(120, 4)) + 1.5 * np.eye(4)[y]
    counts = I.resample_counts(120, 7, 200)
    ours = I.replicates("my_accuracy", I.item_data("my_accuracy", y, scores), counts)
    built_in = I.replicates("accuracy", I.item_data("accuracy", y, scores), counts)
    np.testing.assert_allclose(ours, built_in, atol=1e-12)  # the metric's own function on each resample
    row = I.row_interval("my_accuracy", I.item_data("my_accuracy", y, scores), "t", n_resamples=200)
    assert row.value == pytest.approx(float(np.mean(np.argmax(scores, 1) == y)))
    assert row.low < row.value < row.high

    per_query = rng.uniform(size=30)
    retrieval = I.row_interval("my_map", I.item_data("my_map", None, per_query=per_query), "t")
    assert retrieval.value == pytest.approx(per_query.mean()) and retrieval.low < retrieval.value < retrieval.high


def test_an_unregistered_metric_is_a_one_line_error():
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError, match="no bootstrap for metric 'nope': it is not a registered metric"):
        I.item_data("nope", np.zeros(3, int), np.zeros((3, 2)))
