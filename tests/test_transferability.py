"""Transferability scores against hand-worked or independently derived values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferlab.analysis.transferability import (
    TransferabilityWarning,
    hscore,
    knn_accuracy,
    knn_predict_loo,
    leep,
    logme,
    nce,
)
from transferlab.errors import TransferlabError

# ---------------------------------------------------------------- LogME


def direct_max_evidence(features: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of log N(y; 0, F F^T / alpha + I / beta), divided by n.

    Independent of the library: the marginal likelihood with full n x n matrices (w ~ N(0, I /
    alpha), noise ~ N(0, 1 / beta)) and a generic optimiser, from several starts.
    """
    n = len(y)

    def negative(log_params: np.ndarray) -> float:
        alpha, beta = np.exp(log_params)
        cov = features @ features.T / alpha + np.eye(n) / beta
        return -multivariate_normal.logpdf(y, np.zeros(n), cov)

    best = min(
        (
            minimize(negative, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13, "maxfev": 2000})
            for start in [(0.0, 0.0), (3.0, -1.0), (-2.0, 2.0), (8.0, 0.0)]
        ),
        key=lambda result: result.fun,
    )
    return -best.fun / n


@pytest.mark.parametrize("n,d", [(30, 5), (12, 20)])
def test_logme_matches_direct_evidence_maximisation(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 100 + d)
    labels = np.arange(n) % 3
    features = rng.normal(size=(n, d))
    features[:, 0] += 1.5 * labels  # make one direction informative
    with np.errstate(over="ignore"):
        expected = np.mean([direct_max_evidence(features, (labels == c).astype(float)) for c in range(3)])
    assert logme(features, labels) == pytest.approx(expected, abs=1e-4)


def test_logme_handles_rank_deficient_features() -> None:
    # a dead unit and a linear combination of two others: d = 6 but rank 4 (n > d path)
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 3
    features = rng.normal(size=(40, 6))
    features[:, 0] += labels
    features[:, 4] = 3 * features[:, 0] + features[:, 1]
    features[:, 5] = 0
    with np.errstate(over="ignore"):
        expected = np.mean([direct_max_evidence(features, (labels == c).astype(float)) for c in range(3)])
    assert logme(features, labels) == pytest.approx(expected, abs=1e-4)


def test_logme_multilabel_is_per_label_evidence_on_known_rows() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(16, 4))
    labels = np.array([[1, -1], [-1, 1], [1, 0], [-1, -1]] * 4, dtype=np.int8)
    labels[5, 1] = 0
    per_label = []
    for column in range(2):
        rows = labels[:, column] != 0
        y = (labels[rows, column] == 1).astype(float)
        with np.errstate(over="ignore"):
            per_label.append(direct_max_evidence(features[rows], y))
    assert logme(features, labels) == pytest.approx(np.mean(per_label), abs=1e-4)


def test_logme_prefers_features_that_separate_the_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    noise = rng.normal(size=(100, 8))
    informative = noise + 3.0 * np.eye(8)[labels]
    assert logme(informative, labels) > logme(noise, labels) + 0.1


# ---------------------------------------------------------------- LEEP and NCE


def test_leep_hand_case() -> None:
    # theta = [[1, 0], [.5, .5], [0, 1]], y = [0, 0, 1]
    # P(y,z) = [[1.5/3, .5/3], [0, 1/3]], P(z) = [.5, .5] -> P(y|z) = [[1, 1/3], [0, 2/3]]
    # image 1: 1*1 = 1; image 2: 1*.5 + 1/3*.5 = 2/3; image 3: 2/3*1 = 2/3
    # LEEP = (log 1 + 2 log 2/3) / 3
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert leep(probs, [0, 0, 1]) == pytest.approx(2 / 3 * math.log(2 / 3), abs=1e-12)


def test_leep_perfect_source_scores_zero_and_is_at_most_zero() -> None:
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    assert leep(probs, [2, 0, 1, 2, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    random_probs = rng.dirichlet(np.ones(5), size=40)
    assert leep(random_probs, rng.integers(0, 3, 40)) < 0


def test_nce_hand_case() -> None:
    # z = [0,0,1,1], y = [0,1,1,1]: H(Y|Z=0) = log 2, H(Y|Z=1) = 0, P(Z=0) = 1/2
    assert nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * math.log(2), abs=1e-12)
    # source classes are relabelled target classes: no uncertainty left
    assert nce([5, 5, 9, 9, 2], [1, 1, 0, 0, 1]) == pytest.approx(0.0, abs=1e-12)


def test_multilabel_leep_nce_hscore_average_binary_tasks_on_known_rows() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=12)
    pred = probs.argmax(axis=1)
    feats = rng.normal(size=(12, 3))
    labels = np.array([[1, -1], [-1, 1], [1, 1], [-1, 0]] * 3, dtype=np.int8)
    for score, first in ((leep, probs), (nce, pred), (hscore, feats)):
        per_column = []
        for column in range(2):
            rows = labels[:, column] != 0
            per_column.append(score(first[rows], (labels[rows, column] == 1).astype(int)))
        assert score(first, labels) == pytest.approx(np.mean(per_column), abs=1e-12)


# ---------------------------------------------------------------- H-score


def test_hscore_one_dimensional_hand_case() -> None:
    # f = [0,2,4,6], y = [0,0,1,1]: var f = (9+1+1+9)/4 = 5; class means 1, 5 -> var = 4; H = 4/5
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert hscore(f, [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-12)


def test_hscore_ignores_uninformative_and_duplicated_directions() -> None:
    # second column is uncorrelated with the first and has equal class means -> adds 0
    f = np.array([[0.0, 1.0], [2.0, -1.0], [4.0, -1.0], [6.0, 1.0]])
    assert hscore(f, [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-12)
    # singular covariance (the same column twice): the pseudo-inverse keeps H = 0.8
    assert hscore(np.c_[f[:, 0], f[:, 0]], [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-9)


def test_hscore_is_bounded_by_classes_minus_one() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    separated = rng.normal(size=(30, 6)) * 0.01 + np.eye(6)[labels] * 10
    assert 1.9 < hscore(separated, labels) <= 2.0 + 1e-9


# ---------------------------------------------------------------- leave-one-out k-NN


ANGLES = np.deg2rad([0, 10, 30, 70, 100, 115])
POINTS = np.c_[np.cos(ANGLES), np.sin(ANGLES)]
POINT_LABELS = np.array([0, 0, 1, 1, 1, 0])


def test_knn_hand_case() -> None:
    # cosine similarity orders neighbours by angle difference.
    # k=1: 0->10 (0 ok), 10->0 (0 ok), 30->10 (0, wrong), 70->100 (1 ok), 100->115 (0, wrong),
    #      115->100 (1, wrong): 3/6
    assert knn_accuracy(POINTS, POINT_LABELS, 1) == pytest.approx(0.5)
    # k=3: 0->{10,30,70} = 0,1,1 -> 1 wrong; 10->{0,30,70} -> 1 wrong; 30->{10,0,70} -> 0 wrong;
    #      70->{100,115,30} = 1,0,1 -> 1 ok; 100->{115,70,30} = 0,1,1 -> 1 ok;
    #      115->{100,70,30} -> 1 wrong: 2/6
    assert knn_accuracy(POINTS, POINT_LABELS, 3) == pytest.approx(1 / 3)


def test_knn_vote_tie_goes_to_the_nearest_neighbours_class() -> None:
    # with k=2 every split vote is broken by the nearer neighbour, so k=2 == k=1 per image
    preds1 = knn_predict_loo(POINTS, POINT_LABELS, 2, k=1)
    preds2 = knn_predict_loo(POINTS, POINT_LABELS, 2, k=2)
    np.testing.assert_array_equal(preds1, [0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(preds2, preds1)


def test_knn_is_cosine_and_mean_class_option() -> None:
    scaled = POINTS * np.array([1.0, 5.0, 0.1, 2.0, 7.0, 3.0])[:, None]
    assert knn_accuracy(scaled, POINT_LABELS, 1) == pytest.approx(0.5)
    # k=1 per class: class 0 (images 0,1,5) 2/3 right, class 1 (images 2,3,4) 1/3 right
    assert knn_accuracy(POINTS, POINT_LABELS, 1, mean_class=True) == pytest.approx(0.5)
    labels = np.array([0, 0, 0, 0, 1, 1])
    # k=1: 0,10,30 right; 70->100 (1, wrong); 100->115 right; 115->100 right: class 0 3/4, class 1 2/2
    assert knn_accuracy(POINTS, labels, 1) == pytest.approx(5 / 6)
    assert knn_accuracy(POINTS, labels, 1, mean_class=True) == pytest.approx((3 / 4 + 1) / 2)


def test_knn_chunks_agree_with_brute_force() -> None:
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(203, 16))
    labels = rng.integers(0, 4, 203)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :5]
    expected = []
    for row in nearest:
        counts = np.bincount(labels[row], minlength=4)
        tied = np.nonzero(counts == counts.max())[0]
        expected.append(next(labels[j] for j in row if labels[j] in tied))
    for chunk in (1, 17, 203):
        np.testing.assert_array_equal(knn_predict_loo(feats, labels, 4, k=5, chunk=chunk), expected)


# ---------------------------------------------------------------- bad input


FEATURES = np.random.default_rng(9).normal(size=(8, 3))
PROBS = np.random.default_rng(9).dirichlet(np.ones(3), size=8)
PRED = np.array([0, 1, 2, 0, 1, 2, 0, 1])
SCORES = [
    ("logme", lambda y, **kw: logme(FEATURES, y, **kw)),
    ("leep", lambda y, **kw: leep(PROBS, y, **kw)),
    ("nce", lambda y, **kw: nce(PRED, y, **kw)),
    ("hscore", lambda y, **kw: hscore(FEATURES, y, **kw)),
    ("knn_accuracy", lambda y, **kw: knn_accuracy(FEATURES, y, **kw)),
]


@pytest.mark.parametrize("name,score", SCORES)
def test_single_class_is_an_error(name: str, score) -> None:
    with pytest.raises(TransferlabError, match=f"{name}: labels hold a single class"):
        score(np.zeros(8, dtype=int))


@pytest.mark.parametrize("name,score", SCORES)
def test_fewer_images_than_classes_is_an_error(name: str, score) -> None:
    with pytest.raises(TransferlabError, match=r"fewer images \(8\) than classes \(10\)"):
        score(np.array([0, 1, 2, 3, 0, 1, 2, 3]), num_classes=10)
    with pytest.raises(TransferlabError, match="8 images for 8 classes"):
        score(np.arange(8))


@pytest.mark.parametrize("name,score", SCORES)
def test_wrong_label_length_is_an_error(name: str, score) -> None:
    with pytest.raises(TransferlabError, match="labels have shape"):
        score(np.array([0, 1, 0]))


@pytest.mark.parametrize("score", [logme, hscore, knn_accuracy])
def test_zero_variance_features_give_nan_with_warning(score) -> None:
    constant = np.tile([1.0, 2.0, 0.0], (8, 1))
    with pytest.warns(TransferabilityWarning, match="zero variance"):
        assert math.isnan(score(constant, [0, 1] * 4))


def test_constant_source_predictions_give_nan_with_warning() -> None:
    with pytest.warns(TransferabilityWarning, match="identical for every image"):
        assert math.isnan(leep(np.tile([0.2, 0.8], (6, 1)), [0, 1] * 3))
    with pytest.warns(TransferabilityWarning, match="same class"):
        assert math.isnan(nce(np.full(6, 4), [0, 1] * 3))


@pytest.mark.parametrize("score", [logme, hscore, knn_accuracy])
def test_nan_features_are_an_error(score) -> None:
    bad = FEATURES.copy()
    bad[3, 1] = np.nan
    with pytest.raises(TransferlabError, match="NaN/inf values .* row 3"):
        score(bad, [0, 1] * 4)


def test_source_probs_must_be_probabilities() -> None:
    with pytest.raises(TransferlabError, match="row 0 sums to"):
        leep(np.ones((4, 3)), [0, 1, 0, 1])
    with pytest.raises(TransferlabError, match="negative values"):
        leep(np.array([[1.5, -0.5]] * 4), [0, 1, 0, 1])
    with pytest.raises(TransferlabError, match="integer source class"):
        nce(np.array([0.5, 1, 0, 1]), [0, 1, 0, 1])


def test_knn_rejects_bad_k_and_multilabel() -> None:
    with pytest.raises(TransferlabError, match="k must be an integer in 1..7"):
        knn_accuracy(FEATURES, [0, 1] * 4, k=8)
    with pytest.raises(TransferlabError, match="single-label"):
        knn_accuracy(FEATURES, np.ones((8, 2), dtype=np.int8))


def test_multilabel_degenerate_columns_are_warned_or_an_error() -> None:
    labels = np.array([[1, 1], [-1, 1], [1, 0], [-1, 1]] * 2, dtype=np.int8)
    with pytest.warns(TransferabilityWarning, match=r"columns 1\)"):
        with_skip = hscore(FEATURES, labels)
    assert with_skip == pytest.approx(hscore(FEATURES, (labels[:, 0] == 1).astype(int)))
    with pytest.raises(TransferlabError, match="no label column has both"):
        hscore(FEATURES, np.ones((8, 2), dtype=np.int8))
    with pytest.raises(TransferlabError, match="must be 1 .*-1 .* or 0"):
        logme(FEATURES, np.full((8, 2), 2))


def test_absent_classes_are_warned_and_labels_checked_against_num_classes() -> None:
    with pytest.warns(TransferabilityWarning, match="1 of 3 classes have no image"):
        hscore(FEATURES, [0, 1] * 4, num_classes=3)
    with pytest.raises(TransferlabError, match="label 3 at row 7 is outside 0..2"):
        hscore(FEATURES, [0, 1, 2, 0, 1, 2, 0, 3], num_classes=3)


def test_clean_input_raises_no_warning() -> None:
    labels = [0, 1] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (logme(FEATURES, labels), leep(PROBS, labels), nce(PRED, labels), hscore(FEATURES, labels),
                      knn_accuracy(FEATURES, labels, 3)):
            assert math.isfinite(value)
