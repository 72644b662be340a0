"""Feature post-processing: L2, signed power, PCA / PCA-whitening, composed in any order.

The paper's best retrieval pipeline is L2 -> PCA(-whitening) -> signed power -> L2. Every step
is a scikit-learn transformer (``BaseEstimator`` + ``TransformerMixin``: constructors store
their arguments as given and ``fit`` checks them, so ``clone``, ``get_params``, ``Pipeline``
and ``cross_val_score`` work; float32 in and out) fit on training data only, or on a separate
dataset (Paris for Oxford), so that test features never leak into fitted statistics.
``build_postprocess("l2,pca256,power,l2")`` turns the compact spec used in study configs into a
fitted-on-demand pipeline.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import NotFittedError

from transferlab.errors import InvalidInput

# Rows per chunk when accumulating float64 statistics, so memory stays bounded for large sets.
_CHUNK = 4096


class NotFitted(InvalidInput, NotFittedError):
    """``transform`` / ``predict`` before ``fit`` (also scikit-learn's ``NotFittedError``)."""


class NotNumeric(InvalidInput, TypeError):
    """Features that are not numbers (also a ``TypeError``, as ``np.asarray`` raises)."""


def check_features(X: object, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 (n, d) array; reject other shapes and NaN/inf.

    The shared input check of every estimator here. Messages contain the phrases scikit-learn's
    estimator checks look for ("sparse", "Complex data not supported", "Reshape your data",
    "0 feature(s)").
    """
    if hasattr(X, "tocsr") or hasattr(X, "toarray"):
        raise InvalidInput(f"{name}: sparse input is not supported; pass a dense array (X.toarray())")
    try:
        arr = np.asarray(X)
        if arr.dtype.kind == "c":
            raise InvalidInput(f"{name}: Complex data not supported")
        arr = arr.astype(np.float32, copy=False)
    except TypeError as exc:
        raise NotNumeric(f"{name}: cannot convert features to float32 ({exc})") from None
    except ValueError as exc:
        raise InvalidInput(f"{name}: cannot convert features to float32 ({exc})") from None
    if arr.ndim != 2:
        hint = "; Reshape your data with X.reshape(1, -1) for a single sample" if arr.ndim == 1 else ""
        raise InvalidInput(
            f"{name}: features must be a 2-D (n_samples, n_features) array, got shape {arr.shape}{hint}"
        )
    if arr.shape[0] == 0:
        raise InvalidInput(f"{name}: empty feature matrix of shape {arr.shape}: 0 sample(s)")
    if arr.shape[1] == 0:
        raise InvalidInput(
            f"{name}: empty feature matrix: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        row, col = bad[0]
        raise InvalidInput(
            f"{name}: {len(bad)} non-finite feature values (NaN/inf), first at row {row}, column {col}"
        )
    return np.ascontiguousarray(arr)


def check_width(estimator: object, X: np.ndarray) -> None:
    """Reject features of another width than ``fit`` saw (scikit-learn's wording)."""
    width = getattr(estimator, "n_features_in_", None)
    if width is not None and X.shape[1] != width:
        raise InvalidInput(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting {width} features "
            f"as input (fitted on {width}-dimensional features)"
        )


def _float32_tags(tags):
    """Tags of a float32-in, float32-out transformer."""
    tags.transformer_tags.preserves_dtype = ["float32"]
    return tags


class Transformer(Protocol):
    """What a post-processing step provides."""

    @property
    def spec(self) -> str: ...

    def fit(self, X: np.ndarray, y: object = None) -> Transformer: ...

    def transform(self, X: np.ndarray) -> np.ndarray: ...

    def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray: ...


class _Stateless(TransformerMixin, BaseEstimator):
    """Base for steps with nothing to learn: ``fit`` only checks the input and records its width.

    ``transform`` works unfitted too (a stateless step needs no statistics); once fitted it
    rejects features of another width, as every scikit-learn transformer does.
    """

    @property
    def spec(self) -> str:
        """The step's compact name (``l2``, ``power``)."""
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: object = None) -> _Stateless:
        self._check_params()
        self.n_features_in_ = check_features(X).shape[1]
        return self

    def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def transform(self, X: np.ndarray) -> np.ndarray:
        self._check_params()
        X = check_features(X)
        check_width(self, X)
        return self._apply(X)

    def __sklearn_tags__(self):
        tags = _float32_tags(super().__sklearn_tags__())
        tags.requires_fit = False
        return tags

    def _check_params(self) -> None:
        pass

    def _apply(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Vectors along the last axis scaled to unit Euclidean norm (all-zero vectors stay zero).

    The one L2 normalisation of the package (``L2Normalize``, the retrieval head and concat
    sources call it): any rank (``(n, D)`` descriptors, ``(n, R, D)`` sub-windows), float32
    out, norms accumulated in float64, in blocks of rows so memory stays bounded.
    """
    arr = np.asarray(X, dtype=np.float32)
    flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim != 2 else arr
    out = np.empty(flat.shape, dtype=np.float32)
    for start in range(0, len(flat), _CHUNK):
        block = flat[start : start + _CHUNK]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        norms[norms == 0] = 1.0
        out[start : start + _CHUNK] = block / norms[:, None]
    return out.reshape(arr.shape)


class L2Normalize(_Stateless):
    """Scale each row to unit Euclidean norm; all-zero rows stay zero (``l2_normalize``)."""

    @property
    def spec(self) -> str:
        return "l2"

    def _apply(self, X: np.ndarray) -> np.ndarray:
        return l2_normalize(X)


class PowerNormalize(_Stateless):
    """Signed power ``sign(x) * |x| ** alpha`` (alpha=0.5 is the signed square root)."""

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha

    @property
    def spec(self) -> str:
        return "power" if self.alpha == 0.5 else f"power{self.alpha:g}"

    def _check_params(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number)) or not (
            np.isfinite(self.alpha) and self.alpha > 0
        ):
            raise InvalidInput(f"PowerNormalize: alpha must be a positive number, got {self.alpha!r}")

    def _apply(self, X: np.ndarray) -> np.ndarray:
        return (np.sign(X) * np.power(np.abs(X), float(self.alpha))).astype(np.float32)


class PCA(TransformerMixin, BaseEstimator):
    """Exact PCA to ``dim`` components, optionally whitened; fit on training data only.

    Statistics are accumulated in float64: the (d, d) covariance when n >= d, otherwise the
    (n, n) Gram matrix (the economy form), then a symmetric eigendecomposition. Components are
    sign-fixed (largest-magnitude coordinate positive) so fits are reproducible. Whitening
    divides component k by ``sqrt(var_k + eps * var_1)``: ``eps`` is relative to the largest
    variance, so it is scale-free and keeps near-zero directions from exploding. Variances use
    the unbiased ``n - 1`` denominator (as scikit-learn's PCA). If ``dim`` exceeds the rank of
    the centred fit data (at most ``min(n - 1, d)``), only the rank many components are kept
    and a warning says so; ``n_components_`` holds the number kept. Parameters are checked
    by ``fit`` (scikit-learn's convention: the constructor only stores them).
    """

    def __init__(self, dim: int, whiten: bool = False, eps: float = 1e-6):
        self.dim = dim
        self.whiten = whiten
        self.eps = eps

    @property
    def spec(self) -> str:
        return f"pca{'w' if self.whiten else ''}{self.dim}"

    def fit(self, X: np.ndarray, y: object = None) -> PCA:
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim < 1:
            raise InvalidInput(f"PCA: dim must be a positive integer, got {self.dim!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float, np.number)) or not (
            np.isfinite(self.eps) and self.eps >= 0
        ):
            raise InvalidInput(f"PCA: eps must be a non-negative number, got {self.eps!r}")
        X = check_features(X)
        n, d = X.shape
        if n < 2:
            raise InvalidInput(f"PCA: needs at least 2 samples to fit, got {n} sample(s)")
        mean = X.mean(axis=0, dtype=np.float64)
        if n >= d:
            variances, components = _eig_covariance(X, mean)
        else:
            variances, components = _eig_gram(X, mean)
        variances = np.maximum(variances / (n - 1), 0.0)
        top = variances[0] if len(variances) else 0.0
        rank = int(np.sum(variances > top * 1e-10)) if top > 0 else 0
        if rank == 0:
            raise InvalidInput(f"PCA: the {n} fit samples are all identical; nothing to project on")
        keep = min(self.dim, rank)
        if keep < self.dim:
            warnings.warn(
                f"PCA: asked for {self.dim} components but the fit data ({n} samples x {d} features) "
                f"has rank {rank} after centring; keeping {keep} components",
                UserWarning,
                stacklevel=2,
            )
        components = components[:keep]
        # Sign convention: largest-magnitude coordinate of each component is positive.
        flip = np.sign(components[np.arange(keep), np.argmax(np.abs(components), axis=1)])
        components = components * flip[:, None]
        self.mean_ = mean.astype(np.float32)
        self.components_ = components.astype(np.float32)
        self.explained_variance_ = variances[:keep].copy()
        self.n_components_ = keep
        self.n_features_in_ = d
        scale = np.ones(keep)
        if self.whiten:
            scale = 1.0 / np.sqrt(variances[:keep] + float(self.eps) * top)
        self._projection = (components.T * scale[None, :]).astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_projection"):
            raise NotFitted("PCA: call fit (on training data) before transform")
        X = check_features(X)
        check_width(self, X)
        return np.ascontiguousarray((X - self.mean_) @ self._projection, dtype=np.float32)

    def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def __sklearn_tags__(self):
        return _float32_tags(super().__sklearn_tags__())


def _eig_covariance(X: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the centred scatter matrix (d x d), largest first; rows are components."""
    d = X.shape[1]
    scatter = np.zeros((d, d))
    for start in range(0, len(X), _CHUNK):
        block = X[start : start + _CHUNK].astype(np.float64) - mean
        scatter += block.T @ block
    vals, vecs = np.linalg.eigh(scatter)
    return vals[::-1], vecs[:, ::-1].T


def _eig_gram(X: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Economy form for n < d: eigenpairs of the (n x n) Gram matrix mapped back to feature space."""
    n, d = X.shape
    gram = np.zeros((n, n))
    for start in range(0, d, _CHUNK):
        block = X[:, start : start + _CHUNK].astype(np.float64) - mean[start : start + _CHUNK]
        gram += block @ block.T
    vals, vecs = np.linalg.eigh(gram)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    positive = vals > (vals[0] * 1e-12 if vals[0] > 0 else 0.0)
    vals, vecs = vals[positive], vecs[:, positive]
    components = np.empty((len(vals), d))
    inv_sv = 1.0 / np.sqrt(vals)
    for start in range(0, d, _CHUNK):
        block = X[:, start : start + _CHUNK].astype(np.float64) - mean[start : start + _CHUNK]
        components[:, start : start + _CHUNK] = (vecs.T @ block) * inv_sv[:, None]
    return vals, components


class Postprocess(TransformerMixin, BaseEstimator):
    """A sequence of steps applied in order; ``fit`` fits each on the output of the previous.

    Like ``sklearn.pipeline.Pipeline`` of unnamed transformers, with the compact ``spec``
    of study configs; ``clone`` copies the steps unfitted.
    """

    def __init__(self, steps: Sequence[Transformer] = ()):
        self.steps = steps

    @property
    def spec(self) -> str:
        """The compact spec this pipeline corresponds to (``"none"`` when empty)."""
        return ",".join(step.spec for step in self.steps) or "none"

    def fit(self, X: np.ndarray, y: object = None) -> Postprocess:
        self.fit_transform(X)
        return self

    def fit_transform(self, X: np.ndarray, y: object = None) -> np.ndarray:
        X = check_features(X)
        width = X.shape[1]
        fitted = [clone(step) for step in self.steps]  # ``steps`` stays as given (unfitted)
        for step in fitted:
            X = step.fit_transform(X)
        self.steps_ = fitted
        self.n_features_in_ = width
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X)
        if not hasattr(self, "steps_"):
            if self.steps:
                raise NotFitted(f"postprocess {self.spec!r}: call fit (on training data) before transform")
            return X
        check_width(self, X)
        for step in self.steps_:
            X = step.transform(X)
        return X

    def __sklearn_tags__(self):
        tags = _float32_tags(super().__sklearn_tags__())
        tags.requires_fit = bool(self.steps)
        return tags

    def __repr__(self) -> str:
        return f"Postprocess({self.spec!r})"


_TOKEN = re.compile(r"^(?:(?P<l2>l2)|(?P<power>power)(?P<alpha>\d*\.?\d+)?|(?P<pca>pcaw?)(?P<dim>\d+))$")


def build_postprocess(spec: str | Sequence[str]) -> Postprocess:
    """Parse a compact spec into a pipeline.

    Tokens, comma separated (or a list of them), applied left to right: ``l2``; ``power``
    (signed square root) or ``power<alpha>`` such as ``power0.3``; ``pca<d>`` (PCA to d dims);
    ``pcaw<d>`` (PCA-whitening to d dims). ``none`` (alone) is the identity. Example: the
    paper's order ``"l2,pca256,power,l2"``.
    """
    if isinstance(spec, str):
        tokens = [t.strip().lower() for t in spec.split(",")]
    else:
        tokens = [str(t).strip().lower() for t in spec]
    if tokens == ["none"] or tokens == []:
        return Postprocess([])
    if "none" in tokens:
        raise InvalidInput(f"postprocess spec {spec!r}: 'none' cannot be combined with other steps")
    steps: list[Transformer] = []
    for token in tokens:
        match = _TOKEN.match(token)
        if match is None:
            raise InvalidInput(
                f"postprocess spec {spec!r}: unknown step {token!r} "
                "(expected l2, power, power<alpha>, pca<dim>, pcaw<dim>, or none)"
            )
        if match["l2"]:
            steps.append(L2Normalize())
        elif match["power"]:
            steps.append(PowerNormalize(float(match["alpha"]) if match["alpha"] else 0.5))
        else:
            dim = int(match["dim"])
            if dim < 1:
                raise InvalidInput(f"postprocess spec {spec!r}: PCA dimension must be positive in {token!r}")
            steps.append(PCA(dim, whiten=match["pca"] == "pcaw"))
    return Postprocess(steps)
