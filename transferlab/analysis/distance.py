"""Distance between the source task and a target task: the paper's hand ordering and two estimates.

- ``paper``: Azizpour et al. order the target tasks by hand, by their distance from ImageNet
  (``PAPER_ORDER``, ``paper_distance``). It is the x-axis of the paper's factor-vs-distance
  plots and stays the default.
- ``source_prediction_distance(source_probs)``: from the source classifier's own softmax on the
  target images; how much its predictions tell apart the images (one forward pass, already done
  when the features were extracted; O(n Cs)).
- ``fisher_embedding`` + ``task2vec_distance``: a Task2Vec-style (Achille et al., ICCV 2019)
  embedding of the task: the diagonal Fisher information of a linear softmax probe fitted on
  the frozen features, compared with the normalised cosine distance. Cost: the probe fit,
  O(iterations n d C), plus O(n d C) for the Fisher.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from transferlab.analysis.score_inputs import (
    check_matrix,
    check_probabilities,
    is_constant,
    label_problems,
    nan_with_warning,
)
from transferlab.errors import TransferlabError

# ---------------------------------------------------------------- the paper's ordering

PAPER_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("voc2007", "mit67", "sun397"),  # image classification
    2: ("sun_attributes", "apascal", "h3d"),  # attribute detection
    3: ("pets", "cub", "flowers"),  # fine-grained recognition
    4: ("voc2012_actions", "stanford40", "visual_phrases"),  # compositional
    5: ("holidays", "ukbench", "oxford5k", "roxford5k", "paris6k", "rparis6k", "sculptures6k"),  # retrieval
}

PAPER_ORDER: dict[str, int] = {
    name: rank
    for rank, name in enumerate((name for group in sorted(PAPER_GROUPS) for name in PAPER_GROUPS[group]), start=1)
}
"""Task name -> rank by distance from ImageNet (1 = nearest), in the paper's order."""

PAPER_GROUP: dict[str, int] = {name: group for group, names in PAPER_GROUPS.items() for name in names}
"""Task name -> the paper's group 1..5 (classification, attributes, fine-grained, compositional, retrieval)."""


def paper_distance(task_name: str) -> int:
    """The paper's hand-ordered rank of a target task by distance from ImageNet (1 = nearest)."""
    if task_name not in PAPER_ORDER:
        raise TransferlabError(
            f"task {task_name!r} is not in the paper's ordering; known: {', '.join(PAPER_ORDER)}. "
            f"Use an estimated distance (source_prediction or task2vec) for other tasks"
        )
    return PAPER_ORDER[task_name]


def paper_group(task_name: str) -> int:
    """The paper's group (1 = image classification ... 5 = instance retrieval) of a target task."""
    paper_distance(task_name)
    return PAPER_GROUP[task_name]


# ---------------------------------------------------------------- source predictions


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    from scipy.special import entr

    return entr(probs).sum(axis=-1)


def source_prediction_distance(source_probs: object) -> dict[str, float]:
    """How far the target images are from the source task, judged by the source classifier.

    With theta_i the source softmax on target image i, Cs source classes and
    theta_bar = mean_i theta_i:

    - ``mean_entropy`` = mean_i H(theta_i) / log Cs: 0 = confident on every image, 1 = uniform.
    - ``coverage`` = H(theta_bar) / log Cs: 0 = every image goes to one source class, 1 = the
      images spread evenly over all source classes; ``effective_classes`` = exp H(theta_bar).
    - ``mutual_information`` = H(theta_bar) - mean_i H(theta_i) (nats): what the source
      prediction tells about which target image it is (>= 0 by concavity of H).
    - ``distance`` = 1 - (coverage - mean_entropy) = 1 - I / log Cs, in [0, 1]. Near (0): the
      source is confident on each image and uses many source classes across the images, i.e.
      the source's label space describes the target images well. Far (1): it is unsure
      everywhere, or it puts every image into the same few classes.

    Compare tasks on the same number of images: with n < Cs, H(theta_bar) of confident
    predictions is at most log n, so small samples read as farther.
    """
    probs = check_probabilities(source_probs)
    n, n_source = probs.shape
    log_cs = math.log(n_source)
    conditional = float(np.mean(_entropy(probs)))
    marginal = float(_entropy(probs.mean(axis=0)))
    information = max(marginal - conditional, 0.0)
    return {
        "mean_entropy": conditional / log_cs,
        "coverage": marginal / log_cs,
        "effective_classes": math.exp(marginal),
        "mutual_information": information,
        "distance": min(max(1.0 - information / log_cs, 0.0), 1.0),
        "n_images": float(n),
        "n_source_classes": float(n_source),
    }


# ---------------------------------------------------------------- Task2Vec-style Fisher embedding


def _fit_probe(
    x: np.ndarray, labels: np.ndarray, multilabel: bool, n_out: int, weight_decay: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a linear probe (softmax, or one sigmoid per label) by L-BFGS; returns W, b, probabilities.

    Objective: mean negative log-likelihood + weight_decay / 2 |W|^2 (bias not penalised); it is
    convex, so the zero start gives the same optimum every run.
    """
    import torch

    xt = torch.from_numpy(x)
    w = torch.zeros(n_out, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
    if multilabel:
        target = torch.from_numpy((labels == 1).astype(np.float64))
        mask = torch.from_numpy((labels != 0).astype(np.float64))
    else:
        target_idx = torch.from_numpy(labels)
    optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = xt @ w.T + b
        if multilabel:
            nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=mask, reduction="sum")
            loss = nll / x.shape[0]  # summed over labels, averaged over images
        else:
            loss = torch.nn.functional.cross_entropy(logits, target_idx)
        loss = loss + weight_decay / 2 * (w**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        logits = xt @ w.T + b
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    return w.detach().numpy(), b.detach().numpy(), probs.numpy()


def probe_fisher(
    x: np.ndarray, w: np.ndarray, probs: np.ndarray, *, multilabel: bool = False, mask: np.ndarray | None = None,
    wrt: Literal["features", "head"] = "features",
) -> np.ndarray:
    """Diagonal Fisher information of a fitted linear probe, one value per feature dimension.

    The expectation is over the data and over y drawn from the probe's own predictive
    distribution (the true Fisher, as in Task2Vec), in closed form:

    - ``wrt="features"``: w.r.t. a gain g_d on each input feature (x_d -> g_d x_d, at g = 1),
      i.e. the Fisher of the probe network's last layer, the analogue of Task2Vec's per-filter
      Fisher. Softmax: F_d = mean_i x_id^2 Var_{y ~ p_i}(W_yd). Sigmoids: F_d = mean_i x_id^2
      sum_k m_ik p_ik (1 - p_ik) W_kd^2 (m = 1 where the label is known). It does not change
      when the features are rescaled and the probe refitted, and its length is d whatever the
      number of classes.
    - ``wrt="head"``: w.r.t. the probe's weights W_cd, summed over classes c:
      F_d = mean_i x_id^2 sum_c p_ic (1 - p_ic) (sigmoids: masked likewise). Depends on the
      probe only through its confidence.
    """
    x2 = x**2
    if multilabel:
        weight = probs * (1 - probs) * (mask if mask is not None else 1.0)  # (n, K)
        if wrt == "features":
            return (x2 * (weight @ w**2)).mean(axis=0)
        return (x2 * weight.sum(axis=1, keepdims=True)).mean(axis=0)
    if wrt == "features":
        mean_w = probs @ w  # (n, d): E_y[W_yd]
        var_w = np.maximum(probs @ w**2 - mean_w**2, 0.0)
        return (x2 * var_w).mean(axis=0)
    return (x2 * (probs * (1 - probs)).sum(axis=1, keepdims=True)).mean(axis=0)


def fisher_embedding(
    features: object,
    labels: object,
    *,
    wrt: Literal["features", "head"] = "features",
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    num_classes: int | None = None,
) -> np.ndarray:
    """Task2Vec-style embedding (d,) of a task on a frozen representation.

    A cheap proxy of Achille et al. (2019): the probe network is the frozen source up to the
    layer that produced ``features``; a linear softmax probe (one sigmoid per label for
    multi-label (n, K) labels, 0 = ignored) is fitted on the features, scaled by one global
    factor so that the mean squared row norm is 1, and its diagonal Fisher information is
    returned (see ``probe_fisher`` for ``wrt``). Compare embeddings computed on the same
    representation with ``task2vec_distance``. To embed the source task when no source data
    is at hand, use the target images labelled by the source's argmax predictions.
    Cost: L-BFGS on a convex problem, O(max_iter n d C), plus O(n d C) for the Fisher.
    """
    if wrt not in ("features", "head"):
        raise TransferlabError(f"fisher_embedding: wrt must be 'features' or 'head'; got {wrt!r}")
    feats = check_matrix(features, "features")
    problems = label_problems(labels, feats.shape[0], num_classes, score="fisher_embedding")
    if is_constant(feats):
        nan_with_warning("fisher_embedding", "features have zero variance (every image gives the same vector)")
        return np.full(feats.shape[1], math.nan)
    scale = math.sqrt(float(np.mean(np.sum(feats**2, axis=1))))
    x = feats / scale
    array = np.asarray(labels)
    if problems[0].multilabel:
        used = array.astype(np.int64)
        w, _, probs = _fit_probe(x, used, True, used.shape[1], weight_decay, max_iter)
        return probe_fisher(x, w, probs, multilabel=True, mask=(used != 0).astype(np.float64), wrt=wrt)
    (problem,) = problems
    w, _, probs = _fit_probe(x, problem.codes, False, problem.n_classes, weight_decay, max_iter)
    return probe_fisher(x, w, probs, wrt=wrt)


def task2vec_distance(e1: object, e2: object) -> float:
    """Normalised cosine distance of Task2Vec: 1 - cos(e1 / (e1 + e2), e2 / (e1 + e2)).

    Element-wise division; dimensions where e1 + e2 = 0 (no information in either task) are
    left out. In [0, 1] for non-negative embeddings; 0 = same task (up to nothing), 1 = the
    tasks use disjoint dimensions.
    """
    a = np.asarray(e1, dtype=np.float64)
    b = np.asarray(e2, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise TransferlabError(f"task2vec_distance: embeddings must be 1-D of one length; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TransferlabError("task2vec_distance: embeddings hold NaN/inf (a degenerate task?)")
    if (a < 0).any() or (b < 0).any():
        raise TransferlabError("task2vec_distance: Fisher embeddings are non-negative; got negative entries")
    if not a.any() or not b.any():
        raise TransferlabError("task2vec_distance: an embedding is all zero (a task without information)")
    total = a + b
    used = total > 0
    ra, rb = a[used] / total[used], b[used] / total[used]
    return float(1.0 - ra @ rb / (np.linalg.norm(ra) * np.linalg.norm(rb)))
