"""scikit-learn conventions: the probe and the post-processing steps clone, expose their
parameters, check them in ``fit`` (never in ``__init__``), and work inside a ``Pipeline`` and
``cross_val_score``; the validation split that chooses C is the ``cv`` parameter
(``stack_validation``), so clones, folds and pipelines carry it.

``sklearn.utils.estimator_checks.check_estimator`` (scikit-learn 1.9), run in
``test_sklearn_estimator_checks``:

* ``L2Normalize``, ``PowerNormalize``, ``PCA`` and ``Postprocess``: every check passes
  (float32 in and out is declared: ``transformer_tags.preserves_dtype = ["float32"]``; the two
  stateless steps declare ``requires_fit = False``) except ``check_array_api_input``, skipped
  by scikit-learn itself without ``SCIPY_ARRAY_API``.
* ``LinearProbe``: 49 checks pass. Skipped by scikit-learn: ``check_array_api_input`` (as
  above) and ``check_classifier_data_not_an_array`` (needs pandas, not installed). Failing by
  design, so not applicable (``PROBE_NOT_APPLICABLE``):
  - ``check_classifiers_train`` (3 variants) and ``check_classifiers_classes``: with two
    classes scikit-learn wants ``decision_function`` of shape (n,); the probe returns one
    column per class, (n, 2), like every other task, because the study scores the columns in
    ``classes_`` order with the task's metric. ``predict`` and ``score`` follow the convention.
  - ``check_class_weight_classifiers``: ``class_weight`` is None or "balanced" (the paper's
    protocol); per-class dictionaries are not supported and are refused with a one-line error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import PredefinedSplit, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import check_estimator

from transferlab.errors import InvalidInput, TransferlabError
from transferlab.features.postprocess import (
    PCA,
    L2Normalize,
    Postprocess,
    PowerNormalize,
    build_postprocess,
)
from transferlab.heads.probe import LinearProbe, stack_validation

PROBE_NOT_APPLICABLE = {
    "check_classifiers_train": "binary decision_function has one column per class, (n, 2)",
    "check_classifiers_classes": "binary decision_function has one column per class, (n, 2)",
    "check_class_weight_classifiers": "class_weight is None or 'balanced' only",
}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def probe(**params) -> LinearProbe:
    return LinearProbe(**{"Cs": [0.01, 0.1, 1.0], "device": "cpu", "n_threads": 1, **params})


@pytest.mark.parametrize("estimator", [
    probe(), probe(loss="logistic", class_weight="balanced", multilabel=True),
    probe(cv=PredefinedSplit([-1, -1, 0, 0])), L2Normalize(), PowerNormalize(alpha=0.25),
    PCA(dim=16, whiten=True), Postprocess([L2Normalize(), PCA(8), PowerNormalize()]),
])
def test_clone_and_params_round_trip(estimator):
    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    assert repr(copy) == repr(estimator)
    params = estimator.get_params(deep=False)
    assert set(params) == set(copy.get_params(deep=False))
    copy.set_params(**copy.get_params(deep=False))
    assert repr(copy) == repr(estimator)


def test_constructors_store_arguments_and_fit_checks_them(digits):
    X, y = digits
    # scikit-learn's rule: __init__ stores its arguments as given, even bad ones ...
    assert PowerNormalize(alpha=-1).alpha == -1 and PCA(dim=0).dim == 0 and LinearProbe(loss="hinge").loss == "hinge"
    # ... and fit refuses them with one line that is a TransferlabError and a ValueError
    for estimator, message in [(PowerNormalize(alpha=-1), "alpha must be a positive number"),
                               (PCA(dim=0), "dim must be a positive integer"),
                               (probe(loss="hinge"), "loss must be one of"),
                               (probe(cv=1), "cv must be a number of folds >= 2")]:
        with pytest.raises(InvalidInput, match=message) as caught:
            estimator.fit(X, y)
        assert isinstance(caught.value, TransferlabError) and isinstance(caught.value, ValueError)
        assert "\n" not in str(caught.value)
    with pytest.raises(TransferlabError, match="PCA dimension must be positive"):
        build_postprocess("pca0")  # study configs are still refused when parsed, before any fit
    for unfitted in (PCA(4), probe(), build_postprocess("l2,pca8")):
        with pytest.raises(NotFittedError, match="call fit"):
            (unfitted.predict if hasattr(unfitted, "predict") else unfitted.transform)(X)


def test_set_params_changes_what_fit_uses(digits):
    X, y = digits
    assert PCA(dim=8).set_params(dim=4).fit(X).transform(X).shape == (len(X), 4)
    assert PowerNormalize().set_params(alpha=1.0).fit_transform(np.array([[-4.0, 9.0]], np.float32)).tolist() == [
        [-4.0, 9.0]
    ]
    pipe = Pipeline([("l2", L2Normalize()), ("probe", probe())]).set_params(probe__Cs=[1.0])
    assert pipe.fit(X, y).named_steps["probe"].selection_ == "none"


def test_a_pipeline_in_cross_val_score_matches_fitting_by_hand(digits):
    X, y = digits
    pipe = Pipeline([("power", PowerNormalize()), ("l2", L2Normalize()), ("pca", PCA(dim=32)), ("probe", probe())])
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    # the first fold by hand: the same steps, the same numbers
    train, test = next(iter(StratifiedKFold(3).split(X, y)))
    a, b = X[train], X[test]
    for step in (PowerNormalize(), L2Normalize(), PCA(dim=32)):
        step.fit(a)
        a, b = step.transform(a), step.transform(b)
    assert probe().fit(a, y[train]).score(b, y[test]) == pytest.approx(scores[0])
    # Postprocess (the study's spec) is the same chain
    post = build_postprocess("power,l2,pca32")
    np.testing.assert_array_equal(post.fit(X[train]).transform(X[test]), b)


def test_the_validation_split_chooses_C_like_the_train_then_val_loop(digits):
    """``cv=stack_validation(...)`` is the study's validation protocol: each C trained on the
    training rows only and scored on the validation rows; the chosen C refit on all rows. (The
    old ``fit(X, y, X_val, y_val)`` gave bit-identical coefficients, checked when it was
    replaced.)"""
    X, y = digits
    X_train, y_train, X_val, y_val = X[:600], y[:600], X[600:1000], y[600:1000]
    X_all, y_all, split = stack_validation(X_train, y_train, X_val, y_val)
    assert X_all.shape == (1000, 64) and split.get_n_splits() == 1
    fitted = probe(cv=split).fit(X_all, y_all)
    assert fitted.selection_ == "val"
    loop = [probe(Cs=[C]).fit(X_train, y_train).score(X_val, y_val) for C in fitted.Cs_]
    np.testing.assert_allclose(fitted.cv_scores_, loop, atol=0.005)
    assert fitted.C_ == fitted.Cs_[int(np.argmax(loop))]
    refit = probe(Cs=[fitted.C_]).fit(X_all, y_all)
    np.testing.assert_allclose(fitted.coef_, refit.coef_, atol=1e-3 * np.abs(refit.coef_).max())
    # the same split as explicit (train, eval) row indices gives the same model, bit for bit
    pairs = [(np.arange(600), np.arange(600, 1000))]
    same = probe(cv=pairs).fit(X_all, y_all)
    np.testing.assert_array_equal(same.coef_, fitted.coef_)
    # a clone carries the split and refits identically
    again = clone(probe(cv=split)).fit(X_all, y_all)
    np.testing.assert_array_equal(again.coef_, fitted.coef_)
    np.testing.assert_array_equal(again.predict(X[1000:]), fitted.predict(X[1000:]))


def test_a_pipeline_passes_the_validation_rows_through_its_steps(digits):
    X, y = digits
    X_all, y_all, split = stack_validation(X[:600], y[:600], X[600:1000], y[600:1000])
    pipe = Pipeline([("power", PowerNormalize()), ("l2", L2Normalize()), ("probe", probe(cv=split))]).fit(X_all, y_all)
    by_hand = probe(cv=split).fit(L2Normalize().transform(PowerNormalize().transform(X_all)), y_all)
    fitted = pipe.named_steps["probe"]
    assert fitted.selection_ == "val" and fitted.C_ == by_hand.C_
    np.testing.assert_array_equal(fitted.coef_, by_hand.coef_)
    np.testing.assert_array_equal(
        pipe.predict(X[1000:]), by_hand.predict(L2Normalize().transform(PowerNormalize().transform(X[1000:])))
    )


def test_nested_cross_validation_uses_inner_folds_and_a_fixed_split_is_refused(digits):
    X, y = digits
    inner = cross_val_score(probe(cv=3), X[:900], y[:900], cv=3)  # C by 3-fold inside each outer fold
    assert inner.shape == (3,) and inner.min() > 0.8
    _, _, split = stack_validation(X[:600], y[:600], X[600:1000], y[600:1000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cross_val_score turns the error into a warning + NaN score
        with pytest.raises(ValueError, match="the cv split is for 1000 rows, X has"):
            cross_val_score(probe(cv=split), X[:1000], y[:1000], cv=3, error_score="raise")


def test_validation_input_errors_are_one_line(digits):
    X, y = digits
    with pytest.raises(InvalidInput, match="X_val and y_val"):
        stack_validation(X[:100], y[:100], X[100:200], None)
    with pytest.raises(InvalidInput, match="X_val has 10 features but X has 64"):
        stack_validation(X[:100], y[:100], X[100:200, :10], y[100:200])
    with pytest.raises(InvalidInput, match=r"\[9\] appear in validation but not in training"):
        keep = y[:300] != 9
        X_all, y_all, split = stack_validation(X[:300][keep], y[:300][keep], X[300:600], y[300:600])
        probe(cv=split).fit(X_all, y_all)
    with pytest.raises(InvalidInput, match="out-of-range rows"):
        probe(cv=[(np.arange(10), np.arange(2000, 2010))]).fit(X[:100], y[:100])
    with pytest.raises(TypeError):  # the old call form is gone, loudly
        probe().fit(X[:100], y[:100], X[100:200], y[100:200])


@pytest.mark.parametrize("estimator", [
    LinearProbe(Cs=[0.1, 1.0], device="cpu"), L2Normalize(), PowerNormalize(), PCA(2),
    Postprocess([PowerNormalize(), PCA(2), L2Normalize()]),
], ids=lambda e: type(e).__name__)
def test_sklearn_estimator_checks(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    passed = [r for r in results if r["status"] == "passed"]
    expected = set(PROBE_NOT_APPLICABLE) if isinstance(estimator, LinearProbe) else set()
    assert failed == expected, {r["check_name"]: str(r["exception"])[:200] for r in results if r["status"] == "failed"}
    assert len(passed) >= (49 if isinstance(estimator, LinearProbe) else 45)
