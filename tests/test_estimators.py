"""scikit-learn conventions: the probe and the post-processing steps clone, expose their
parameters, and work inside a Pipeline and cross_val_score (validation data for C selection
routed to the probe as a fit parameter)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from transferlab.errors import TransferlabError
from transferlab.features.postprocess import PCA, L2Normalize, PowerNormalize
from transferlab.heads.probe import LinearProbe


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.mark.parametrize("estimator", [
    LinearProbe(Cs=[0.1, 1.0], device="cpu", n_threads=1), L2Normalize(), PowerNormalize(alpha=0.25),
    PCA(dim=16, whiten=True),
])
def test_clone_and_params_round_trip(estimator):
    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    assert copy.get_params() == estimator.get_params()
    copy.set_params(**copy.get_params())
    assert repr(copy) == repr(estimator)


def test_set_params_changes_what_fit_uses(digits):
    X, y = digits
    pca = PCA(dim=8).set_params(dim=4)
    assert pca.fit(X).transform(X).shape == (len(X), 4)
    assert PowerNormalize().set_params(alpha=1.0).fit_transform(np.array([[-4.0, 9.0]], np.float32)).tolist() == [[-4.0, 9.0]]


def test_a_pipeline_in_cross_val_score_matches_fitting_by_hand(digits):
    X, y = digits
    pipe = Pipeline([("power", PowerNormalize()), ("l2", L2Normalize()), ("pca", PCA(dim=32)),
                     ("probe", LinearProbe(Cs=[0.1, 1.0], device="cpu", n_threads=1))])
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    # the first fold by hand: the same steps, the same numbers
    from sklearn.model_selection import StratifiedKFold

    train, test = next(iter(StratifiedKFold(3).split(X, y)))
    steps = [PowerNormalize(), L2Normalize(), PCA(dim=32)]
    a, b = X[train], X[test]
    for step in steps:
        step.fit(a)
        a, b = step.transform(a), step.transform(b)
    probe = LinearProbe(Cs=[0.1, 1.0], device="cpu", n_threads=1).fit(a, y[train])
    assert probe.score(b, y[test]) == pytest.approx(scores[0])


def test_validation_data_reaches_the_probe_through_the_pipeline(digits):
    X, y = digits
    X_train, y_train, X_val, y_val = X[:1000], y[:1000], X[1000:1400], y[1000:1400]
    direct = LinearProbe(Cs=[0.01, 1.0], device="cpu", n_threads=1).fit(X_train, y_train, X_val, y_val)
    pipe = Pipeline([("l2", L2Normalize()), ("probe", LinearProbe(Cs=[0.01, 1.0], device="cpu", n_threads=1))])
    # the probe selects C on features passed through the same steps: transform X_val first
    pipe.fit(X_train, y_train, probe__X_val=L2Normalize().fit_transform(X_val), probe__y_val=y_val)
    assert pipe.named_steps["probe"].selection_ == direct.selection_ == "val"
    by_hand = LinearProbe(Cs=[0.01, 1.0], device="cpu", n_threads=1).fit(
        L2Normalize().fit_transform(X_train), y_train, L2Normalize().fit_transform(X_val), y_val)
    assert pipe.named_steps["probe"].C_ == by_hand.C_
    np.testing.assert_array_equal(pipe.predict(X[1400:]), by_hand.predict(L2Normalize().fit_transform(X[1400:])))


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(TransferlabError, match="alpha must be a positive number"):
        PowerNormalize(alpha=-1)
    with pytest.raises(TransferlabError, match="dim must be a positive integer"):
        PCA(dim=0)
