"""Transferability scores: how well a frozen representation suits a target task, without training.

Every score is a plain function on arrays (features already in the FeatureStore, labels from
the task's train split), so a sweep over (source, layer, pooling) never needs a forward pass:

- ``logme(features, labels)``: You et al., ICML 2021 (log maximum evidence of a Bayesian
  linear model per class, divided by the number of samples, averaged over classes).
- ``leep(source_probs, labels)``: Nguyen et al., ICML 2020 (log expected empirical prediction).
- ``nce(source_pred, labels)``: Tran et al., ICCV 2019 (negative conditional entropy).
- ``hscore(features, labels)``: Bao et al., ICIP 2019 (tr(cov(f)^+ cov(E[f|y]))).
- ``knn_accuracy(features, labels, k)``: leave-one-out k-NN accuracy under cosine similarity.

Labels are single-label ``(n,)`` class indices, or (all but ``knn_accuracy``) multi-label
``(n, K)`` in {1, -1, 0} as the datasets store them: each label column is then scored as its
own binary task on the images where it is not 0 (difficult/unknown), and the scores are
averaged over the columns.

Bad input is never turned into a silent number: a single class, fewer images than classes,
non-finite values or wrong shapes raise ``TransferlabError``; input with no variance at all
(every image gives the same feature vector or the same source prediction) returns NaN with a
``TransferabilityWarning``, so one degenerate layer does not abort a sweep but shows up as
NaN in every table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# TransferabilityWarning and LabelProblem are part of the scores' API (callers catch the warning)
from transferlab.analysis.score_inputs import (  # noqa: F401
    LabelProblem,
    TransferabilityWarning,
    check_matrix,
    check_probabilities,
    is_constant,
    label_problems,
    nan_with_warning,
    take_rows,
)
from transferlab.errors import TransferlabError

# ---------------------------------------------------------------- LogME


def _decompose(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors U (n, k) and squared singular values (k,) of the non-null part.

    For n > d the d x d Gram matrix is eigendecomposed (cost O(n d^2)) and U recovered as
    F V / s; otherwise the n x n Gram matrix F F^T gives U and s^2 directly (cost O(n^2 d),
    ~10x faster than LAPACK's thin SVD for 150 x 5120 here). Either way the fixed-point loop
    then works in k = rank dimensions.
    """
    n, d = features.shape
    if n > d:
        sigma, v = np.linalg.eigh(features.T @ features)
        sigma, v = sigma[::-1], v[:, ::-1]
        keep = sigma > 10 * max(n, d) * np.finfo(np.float64).eps * max(sigma[0], 0.0)
        sigma, v = sigma[keep], v[:, keep]
        u = (features @ v) / np.sqrt(sigma)
        return u, sigma
    sigma, u = np.linalg.eigh(features @ features.T)
    sigma, u = sigma[::-1], u[:, ::-1]
    keep = sigma > 10 * max(n, d) * np.finfo(np.float64).eps * max(sigma[0], 0.0)
    return u[:, keep], sigma[keep]


def log_evidence(alpha: float, beta: float, x2: np.ndarray, rest: float, sigma: np.ndarray, n: int, d: int) -> float:
    """log p(y | F, alpha, beta) of y = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, 1/beta).

    Written in the SVD basis: ``x2`` are the squared projections of y on the left singular
    vectors, ``rest`` the squared norm of y outside them, ``sigma`` the non-zero eigenvalues of
    F^T F (the other d - k are zero, hence the (d - k) log alpha term).
    """
    t = alpha / beta
    m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))  # |m|^2, m the posterior mean
    res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + rest  # |y - F m|^2
    k = len(sigma)
    log_det_a = float(np.sum(np.log(alpha + beta * sigma))) + (d - k) * math.log(alpha)
    return (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * log_det_a
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )


def profile_log_evidence(t: float, x2: np.ndarray, rest: float, sigma: np.ndarray, n: int) -> tuple[float, float]:
    """Evidence maximised over beta for a fixed t = alpha / beta, and that beta.

    For fixed t the log evidence is n/2 log beta - beta/2 S(t) + g(t) with
    S(t) = |y - F m|^2 + t |m|^2 = sum x2 t / (sigma + t) + rest, so beta* = n / S(t).
    """
    s_t = float(np.sum(x2 * t / (sigma + t))) + rest
    beta = n / max(s_t, 1e-300)
    value = (
        n / 2 * math.log(beta)
        - n / 2
        + len(sigma) / 2 * math.log(t)
        - 0.5 * float(np.sum(np.log(t + sigma)))
        - n / 2 * math.log(2 * math.pi)
    )
    return value, beta


def max_log_evidence(
    y: np.ndarray, u: np.ndarray, sigma: np.ndarray, d: int, *, tol: float = 1e-8, max_iter: int = 100
) -> tuple[float, float, float]:
    """Maximise the evidence over (alpha, beta); returns (max log evidence, alpha, beta).

    MacKay's fixed point as in You et al. (Alg. 1), O(k) per step. It crawls when the maximum
    lies at or near a boundary (alpha -> inf: the features explain nothing of y; beta -> inf:
    y is fitted exactly), so when it has not converged after ``max_iter`` steps a bounded 1-D
    search over log(alpha / beta) on the profile evidence finishes the job and the better of
    the two is kept.
    """
    n = len(y)
    x = u.T @ y
    x2 = x**2
    rest = max(float(y @ y) - float(x2.sum()), 0.0)
    tiny = 1e-300
    alpha, beta = 1.0, 1.0
    previous = evidence = log_evidence(alpha, beta, x2, rest, sigma, n, d)
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
        res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + rest
        new_alpha = max(gamma, tiny) / max(m2, tiny)
        new_beta = (n - gamma) / max(res2, tiny)
        # with n < d the fit can become exact: gamma -> n drives beta to 0 (or alpha/beta out of
        # range) long before convergence; the bounded search below handles that boundary
        if not (0 < new_beta < math.inf and 0 < new_alpha < math.inf and 0 < new_alpha / new_beta < math.inf):
            break
        candidate = log_evidence(new_alpha, new_beta, x2, rest, sigma, n, d)
        if not math.isfinite(candidate):
            break
        alpha, beta, evidence = new_alpha, new_beta, candidate
        if abs(alpha / beta - t) <= tol * t or abs(evidence - previous) <= 1e-13 * max(1.0, abs(evidence)):
            return evidence, alpha, beta
        previous = evidence
    from scipy.optimize import minimize_scalar

    low = math.log(float(sigma.min())) - 40.0
    high = math.log(float(sigma.max())) + 40.0
    found = minimize_scalar(
        lambda log_t: -profile_log_evidence(math.exp(log_t), x2, rest, sigma, n)[0],
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-9},
    )
    polished, beta_star = profile_log_evidence(math.exp(found.x), x2, rest, sigma, n)
    if math.isfinite(polished) and (polished > evidence or not math.isfinite(evidence)):
        return polished, math.exp(found.x) * beta_star, beta_star
    return evidence, alpha, beta


def logme(features: object, labels: object, *, num_classes: int | None = None) -> float:
    """LogME of You et al. (ICML 2021): higher = features fit the labels better.

    Per class c, the target is the one-hot indicator y_c and the model a Bayesian linear
    regression y_c = F w + noise (no bias term, as in the paper) with prior precision alpha and
    noise precision beta; alpha and beta maximise the evidence p(y_c | F) by the fixed point,
    and the maximum log evidence divided by n is averaged over classes. Multi-label labels:
    per label column, the target is the 0/1 positive indicator over the rows not marked 0, the
    evidence is divided by that number of rows, and the column scores are averaged.
    Cost: one SVD, O(n d min(n, d)), then O(min(n, d)) per fixed-point step per class.
    """
    feats = check_matrix(features, "features")
    problems = label_problems(labels, feats.shape[0], num_classes, score="logme")
    if is_constant(feats):
        return nan_with_warning("logme", "features have zero variance (every image gives the same vector)")
    d = feats.shape[1]
    scores = []
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for problem in problems:
        key = b"" if problem.rows is None else problem.rows.tobytes()
        if key not in cache:
            cache[key] = _decompose(take_rows(feats, problem))
        u, sigma = cache[key]
        targets = (
            [problem.codes.astype(np.float64)]
            if problem.multilabel
            else [(problem.codes == c).astype(np.float64) for c in range(problem.n_classes)]
        )
        for y in targets:
            evidence, _, _ = max_log_evidence(y, u, sigma, d)
            scores.append(evidence / len(y))
    return float(np.mean(scores))


# ---------------------------------------------------------------- LEEP and NCE


def _leep_one(probs: np.ndarray, codes: np.ndarray, n_classes: int) -> float:
    n = len(codes)
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), codes] = 1.0
    joint = onehot.T @ probs / n  # P(y, z), (C, Cs)
    marginal = joint.sum(axis=0)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = np.sum(probs * conditional[codes], axis=1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(expected)))


def leep(source_probs: object, labels: object, *, num_classes: int | None = None) -> float:
    """LEEP of Nguyen et al. (ICML 2020): mean log-likelihood of the "expected empirical predictor".

    ``source_probs`` (n, Cs) is the source classifier's softmax on the target images. With the
    empirical joint P(y, z) = mean_i theta_i[z] [y_i = y], the score is
    mean_i log sum_z P(y_i | z) theta_i[z]; it is <= 0, higher = nearer.
    """
    probs = check_probabilities(source_probs)
    problems = label_problems(labels, probs.shape[0], num_classes, score="leep")
    if is_constant(probs):
        return nan_with_warning("leep", "source predictions are identical for every image (no variance)")
    return float(np.mean([_leep_one(take_rows(probs, p), p.codes, p.n_classes) for p in problems]))


def _nce_one(pred: np.ndarray, codes: np.ndarray, n_classes: int, n_source: int) -> float:
    joint = np.zeros((n_classes, n_source))
    np.add.at(joint, (codes, pred), 1.0)
    joint /= len(codes)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    used = joint > 0
    return float(np.sum(joint[used] * np.log((joint / np.where(marginal > 0, marginal, 1.0))[used])))


def nce(source_pred: object, labels: object, *, num_classes: int | None = None) -> float:
    """NCE of Tran et al. (ICCV 2019): -H(Y | Z), Z the source's predicted (argmax) class.

    Empirical joint from counts; sum_{y,z} P(y, z) log P(y | z), in nats, <= 0, higher = nearer.
    """
    pred = np.asarray(source_pred)
    if pred.ndim != 1:
        raise TransferlabError(f"nce: source_pred must be (n,) predicted source classes; got shape {pred.shape}")
    if pred.dtype.kind not in "iu":
        if pred.dtype.kind != "f" or not np.isfinite(pred).all() or not np.all(pred == np.round(pred)):
            raise TransferlabError("nce: source_pred must be integer source class indices (argmax)")
    pred = pred.astype(np.int64)
    if len(pred) and pred.min() < 0:
        raise TransferlabError(f"nce: source_pred holds a negative class index ({pred.min()})")
    problems = label_problems(labels, len(pred), num_classes, score="nce")
    if np.all(pred == pred[0]):
        return nan_with_warning("nce", f"the source predicts the same class ({pred[0]}) for every image")
    _, pred = np.unique(pred, return_inverse=True)
    n_source = int(pred.max()) + 1
    return float(np.mean([_nce_one(take_rows(pred, p), p.codes, p.n_classes, n_source) for p in problems]))


# ---------------------------------------------------------------- H-score


def _hscore_one(feats: np.ndarray, codes: np.ndarray, n_classes: int, rcond: float) -> float:
    n = len(codes)
    centred = feats - feats.mean(axis=0)
    cov = centred.T @ centred / n
    eigval, eigvec = np.linalg.eigh(cov)
    keep = eigval > rcond * max(eigval[-1], 0.0)
    if not keep.any():
        return math.nan
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    means = np.zeros((n_classes, feats.shape[1]))
    np.add.at(means, codes, centred)
    means /= counts[:, None]  # class means of the centred features
    projected = means @ eigvec[:, keep]  # in the eigenbasis of cov(f)
    # tr(cov^+ cov_g), cov_g = sum_c (n_c / n) mu_c mu_c^T
    return float(np.sum(counts / n * np.sum(projected**2 / eigval[keep], axis=1)))


def hscore(features: object, labels: object, *, num_classes: int | None = None, rcond: float = 1e-8) -> float:
    """H-score of Bao et al. (ICIP 2019): tr(cov(f)^+ cov(E[f | y])), higher = more separable.

    Both covariances use 1/n; cov(E[f | y]) is the covariance over images of their class mean
    feature. The pseudo-inverse drops eigenvalues below ``rcond`` times the largest (directions
    with no variance, e.g. dead units or d > n). In [0, C - 1] for C classes.
    """
    feats = check_matrix(features, "features")
    problems = label_problems(labels, feats.shape[0], num_classes, score="hscore")
    if is_constant(feats):
        return nan_with_warning("hscore", "features have zero variance (every image gives the same vector)")
    scores = [_hscore_one(take_rows(feats, p), p.codes, p.n_classes, rcond) for p in problems]
    if any(math.isnan(s) for s in scores):
        return nan_with_warning("hscore", "the features of some label's images have zero variance")
    return float(np.mean(scores))


# ---------------------------------------------------------------- leave-one-out k-NN


def knn_predict_loo(
    features: np.ndarray, codes: np.ndarray, n_classes: int, k: int, chunk: int | None = None
) -> np.ndarray:
    """Leave-one-out k-NN predictions under cosine similarity, computed in row chunks with torch.

    Vote ties go to the tied class whose best-ranked neighbour is nearest (so k = 2 always
    agrees with k = 1). Exact similarity ties between neighbours are ordered by torch.topk.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = torch.from_numpy(codes)
    n = x.shape[0]
    chunk = chunk or max(1, min(n, (1 << 24) // max(n, 1)))
    preds = torch.empty(n, dtype=torch.int64)
    ranks = torch.arange(k, dtype=torch.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = x[start:stop] @ x.T
        rows = torch.arange(stop - start)
        sims[rows, rows + start] = -float("inf")  # leave the image itself out
        neighbours = sims.topk(k, dim=1).indices
        votes_for = y[neighbours]  # (b, k) class of each neighbour, nearest first
        counts = torch.zeros(stop - start, n_classes, dtype=torch.int64)
        counts.scatter_add_(1, votes_for, torch.ones_like(votes_for))
        first = torch.full((stop - start, n_classes), k, dtype=torch.int64)
        first.scatter_reduce_(1, votes_for, ranks.expand_as(votes_for), reduce="amin")
        preds[start:stop] = (counts * (k + 1) - first).argmax(dim=1)
    return preds.numpy()


def knn_accuracy(
    features: object, labels: object, k: int = 1, *, num_classes: int | None = None, mean_class: bool = False
) -> float:
    """Leave-one-out k-NN accuracy under cosine similarity (each image classified by the others).

    Majority vote over the k most similar other images; ties as in ``knn_predict_loo``.
    ``mean_class=True`` returns the mean over classes of per-class accuracy instead of the
    fraction of images. Rows of zero norm have similarity 0 to everything (with a warning).
    Cost: n^2 d multiply-adds in chunks of about 16M similarities (10k x 1280 takes seconds).
    """
    feats = check_matrix(features, "features")
    (problem,) = label_problems(labels, feats.shape[0], num_classes, allow_multilabel=False, score="knn_accuracy")
    n = feats.shape[0]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise TransferlabError(f"knn_accuracy: k must be an integer in 1..{n - 1} (n - 1 other images); got {k!r}")
    if is_constant(feats):
        return nan_with_warning("knn_accuracy", "features have zero variance (every image gives the same vector)")
    zero = int(np.sum(np.linalg.norm(feats, axis=1) == 0))
    if zero:
        warnings.warn(
            f"knn_accuracy: {zero} images have an all-zero feature vector; their cosine "
            f"similarity to every image is taken as 0",
            TransferabilityWarning,
            stacklevel=2,
        )
    preds = knn_predict_loo(feats, problem.codes, problem.n_classes, int(k))
    correct = preds == problem.codes
    if not mean_class:
        return float(correct.mean())
    per_class = np.bincount(problem.codes, weights=correct, minlength=problem.n_classes)
    return float(np.mean(per_class / np.bincount(problem.codes, minlength=problem.n_classes)))


# ------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class FeatureScore:
    """A transferability score of (train features, labels): its name (the key of probe rows'
    ``extra``, ``select --score``), the text tables print, and the function. Higher is better
    for every one of them."""

    name: str
    title: str
    function: Callable[[np.ndarray, np.ndarray], float]
    stored: bool = False  # computed for every study probe row (extra[name]), so the report compares it


def _knn1(features: np.ndarray, labels: np.ndarray) -> float:
    return knn_accuracy(features, labels, k=1)


FEATURE_SCORES: dict[str, FeatureScore] = {}


def register_feature_score(score: FeatureScore) -> FeatureScore:
    """Add a score; a name is registered once (a second registration is an error)."""
    if score.name in FEATURE_SCORES:
        raise TransferlabError(f"transferability score {score.name!r} is registered twice")
    FEATURE_SCORES[score.name] = score
    return score


register_feature_score(FeatureScore("logme", "LogME", logme, stored=True))
register_feature_score(FeatureScore("knn1", "1-NN accuracy (leave-one-out)", _knn1, stored=True))
register_feature_score(FeatureScore("hscore", "H-score", hscore))


def feature_score(name: str) -> FeatureScore:
    if name not in FEATURE_SCORES:
        raise TransferlabError(f"unknown score {name!r}; choose from {', '.join(FEATURE_SCORES)}")
    return FEATURE_SCORES[name]


def stored_scores() -> dict[str, str]:
    """name -> title of the scores every study probe row carries."""
    return {s.name: s.title for s in FEATURE_SCORES.values() if s.stored}
