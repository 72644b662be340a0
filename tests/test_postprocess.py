"""Post-processing transformers: hand-checked cases, scikit-learn PCA, the spec parser."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SklearnPCA

from transferlab.errors import TransferlabError
from transferlab.features.postprocess import (
    PCA,
    L2Normalize,
    Postprocess,
    PowerNormalize,
    build_postprocess,
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)


def test_l2_normalize_hand_checked():
    X = np.array([[3, 4], [0, 0], [-1, 0]], dtype=np.float32)
    out = L2Normalize().fit_transform(X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0], [-1, 0]], atol=1e-7)


def test_power_normalize_is_signed():
    X = np.array([[-4, 9, 0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(PowerNormalize().fit_transform(X), [[-2, 3, 0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(PowerNormalize(alpha=1.0).transform(X), X)
    np.testing.assert_allclose(PowerNormalize(0.3).transform(np.array([[-8.0]])), [[-(8.0**0.3)]], rtol=1e-6)
    for alpha in (0, -0.5, np.nan):
        with pytest.raises(TransferlabError, match="alpha"):  # checked by fit (sklearn: __init__ only stores)
            PowerNormalize(alpha).fit_transform(X)


def test_pca_hand_checked_line():
    """Points on the diagonal: one component along (1, 1)/sqrt(2), variance 2 (n - 1 = 2)."""
    X = np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32)
    pca = PCA(1, eps=0.0).fit(X)
    np.testing.assert_allclose(pca.components_, [[2**-0.5, 2**-0.5]], atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_, [2.0], atol=1e-6)
    np.testing.assert_allclose(pca.transform(X), [[-(2**0.5)], [0], [2**0.5]], atol=1e-6)
    # Fit on one set, transform another: the fit mean (2, 2) is subtracted.
    np.testing.assert_allclose(pca.transform(np.array([[0, 0]])), [[-2 * 2**0.5]], atol=1e-6)
    white = PCA(1, whiten=True, eps=0.0).fit(X)
    np.testing.assert_allclose(white.transform(X), [[-1], [0], [1]], atol=1e-6)


@pytest.mark.parametrize("n", [1797, 40])  # covariance path (n >= d) and economy Gram path (n < d)
@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn(digits, n, whiten):
    X = digits[:n]
    ours = PCA(20, whiten=whiten, eps=0.0).fit(X)
    ref = SklearnPCA(20, whiten=whiten, svd_solver="full").fit(X)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    a, b = ours.transform(digits), ref.transform(digits)
    signs = np.sign((a * b).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(a, b * signs, atol=1e-3 * np.abs(b).max())
    assert a.dtype == np.float32 and a.shape == (len(digits), 20)


def test_economy_path_with_many_features():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((30, 5)) @ rng.standard_normal((5, 300))).astype(np.float32)
    with pytest.warns(UserWarning, match="rank 5"):
        pca = PCA(8).fit(X)
    assert pca.n_components_ == 5
    ref = SklearnPCA(5, svd_solver="full").fit(X)
    a, b = pca.transform(X), ref.transform(X)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-3 * np.abs(b).max())


def test_whitened_training_features_have_identity_covariance(digits):
    out = PCA(16, whiten=True, eps=0.0).fit_transform(digits)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(16), atol=1e-3)
    # eps is relative to the largest variance: component k is scaled by 1/sqrt(var_k + eps var_1).
    damped = PCA(16, whiten=True, eps=0.1).fit(digits)
    var = damped.explained_variance_
    np.testing.assert_allclose(
        np.var(damped.transform(digits), axis=0, ddof=1), var / (var + 0.1 * var[0]), rtol=1e-3
    )


def test_pca_dim_above_rank_clips_with_warning(digits):
    with pytest.warns(UserWarning, match="asked for 50 components.*rank 9.*keeping 9"):
        pca = PCA(50).fit(digits[:10])
    assert pca.transform(digits).shape == (len(digits), 9)
    with pytest.warns(UserWarning, match="rank 61"):  # 3 digit pixels are always 0
        assert PCA(64).fit(digits).n_components_ == 61
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PCA(32).fit(digits)


def test_pca_is_reproducible(digits):
    a = PCA(10, whiten=True).fit(digits).transform(digits[:5])
    b = PCA(10, whiten=True).fit(digits.copy()).transform(digits[:5])
    np.testing.assert_array_equal(a, b)


def test_pca_bad_input(digits):
    with pytest.raises(TransferlabError, match="call fit"):
        PCA(4).transform(digits)
    with pytest.raises(TransferlabError, match="positive integer"):
        PCA(0).fit(digits)
    with pytest.raises(TransferlabError, match="fitted on 64-dimensional"):
        PCA(4).fit(digits).transform(digits[:, :10])
    with pytest.raises(TransferlabError, match="at least 2 samples"):
        PCA(4).fit(digits[:1])
    with pytest.raises(TransferlabError, match="identical"):
        PCA(4).fit(np.ones((5, 3)))
    bad = digits.copy()
    bad[4, 2] = np.inf
    with pytest.raises(TransferlabError, match="non-finite.*row 4, column 2"):
        PCA(4).fit(bad)
    with pytest.raises(TransferlabError, match="2-D"):
        L2Normalize().transform(digits[0])


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("l2", "l2"),
        ("l2,pca32,power,l2", "l2,pca32,power,l2"),
        (" L2 , PCAW16 , l2 ", "l2,pcaw16,l2"),
        ("power,l2", "power,l2"),
        ("power0.3", "power0.3"),
        ("none", "none"),
        (["l2", "pcaw8"], "l2,pcaw8"),
    ],
)
def test_build_postprocess_parses_specs(spec, canonical):
    pipeline = build_postprocess(spec)
    assert isinstance(pipeline, Postprocess)
    assert pipeline.spec == canonical


def test_pipeline_applies_steps_in_order(digits):
    train, test = digits[:1000], digits[1000:]
    pipeline = build_postprocess("l2,pca32,power,l2")
    out = pipeline.fit(train).transform(test)
    l2 = L2Normalize()
    pca = PCA(32).fit(l2.transform(train))
    manual = l2.transform(PowerNormalize().transform(pca.transform(l2.transform(test))))
    np.testing.assert_allclose(out, manual, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    white = build_postprocess("l2,pcaw16,l2")
    assert white.steps[1].whiten and white.steps[1].dim == 16
    identity = build_postprocess("none")
    np.testing.assert_array_equal(identity.fit_transform(train), train)


def test_build_postprocess_rejects_bad_specs(digits):
    for spec in ("l3", "pca", "pcaw-5", "l2,,l2", "", "l2,none", "pca0"):
        with pytest.raises(TransferlabError):
            build_postprocess(spec)
    with pytest.raises(TransferlabError, match="call fit"):
        build_postprocess("l2,pca8").transform(digits)
