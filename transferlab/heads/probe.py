"""Linear probe: one-vs-rest squared-hinge SVM or logistic heads, C chosen on validation.

Every binary head (one per class, times one per fold during k-fold selection) is the exact
minimiser of a strictly convex primal problem, and all heads are solved at once by a batched
truncated Newton method in torch (float32, CPU or CUDA):

* ``loss="squared_hinge"`` minimises ``0.5 * ||[w, b]||^2 + C * sum_i s_i * max(0, 1 - y_i (w.x_i + b))^2``,
  the objective of scikit-learn's ``LinearSVC`` (``intercept_scaling=1``: the bias is
  regularised like an extra feature of value 1).
* ``loss="logistic"`` minimises ``0.5 * ||w||^2 + C * sum_i s_i * log(1 + exp(-y_i (w.x_i + b)))``,
  the objective of ``LogisticRegression`` (bias not regularised); multi-class uses one-vs-rest
  binary heads like the SVM (compare with ``OneVsRestClassifier(LogisticRegression)``).

Solver: Newton directions from preconditioned conjugate gradient on the (generalised) Hessian
``R + C X~^T D X~`` (Keerthi & DeCoste 2005; Lin, Weng & Keerthi 2008), truncated at 10 %
residual as in LIBLINEAR; the Hessian products of all heads are two thin matmuls. When d is
moderate the problem is first rotated into the eigenbasis of ``X~^T X~`` (an exact change of
variables), where each head's preconditioner is its Hessian diagonal plus its exact leading
64 x 64 block; otherwise LIBLINEAR's mixed diagonal preconditioner is used. The step length is
an exact line search (1-D Newton on the convex restriction, reusing ``X p``). A head stops when
a step improves its objective by less than ``tol`` relative (default 1e-6), or its gradient
falls below ``tol`` times its norm at ``w = 0``. Cs are visited in increasing order, each
warm-started from the previous solution.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning

from transferlab.device import resolve_device
from transferlab.errors import InvalidInput
from transferlab.features.postprocess import NotFitted, check_features, check_width

if TYPE_CHECKING:
    from sklearn.model_selection import PredefinedSplit

DEFAULT_CS = np.logspace(-3, 3, 13)
LOSSES = ("squared_hinge", "logistic")


# --------------------------------------------------------------------------- solver

# Rotate into the eigenbasis of X~^T X~ (and precondition there) when d is at most this.
_ROTATE_MAX_DIM = 2048
# Size of the leading eigen-block whose Hessian is inverted exactly in the preconditioner.
_BLOCK = 64
# Below this many feature entries (n x d) a CPU fit runs on one thread: the ops are so short
# that per-op threading overhead outweighs the gain even on an idle machine.
_SMALL_PROBLEM = 1 << 17


class _Design:
    """The feature side shared by all heads: X~ = [X, 1], possibly rotated, and the regulariser.

    Plain form: parameters V are (d + 1, H), ``[w; b]``. Rotated form (moderate d): the solver
    works on A = X~ Q, with Q the eigenvectors of X~^T X~ (largest first), and parameters
    U = Q^T V. The problem is the same (Q is orthogonal), but in that basis a diagonal plus a
    small leading block approximates every head's Hessian well, so CG needs few iterations.
    ``reg_bias`` is 1 when the bias is regularised like a feature (LinearSVC), 0 when it is free.
    """

    def __init__(self, X: torch.Tensor, reg_bias: float, rotate: bool, span: bool = False):
        self.reg_bias = reg_bias
        self.rotated = rotate
        self.n = X.shape[0]
        # Row-space reduction (n < d): every optimal w lies in the span of the training rows
        # (the gradient of the loss is X^T dz, the regulariser is ||w||^2), so with the thin
        # factorisation X^T = P R (P orthonormal, d x n) the problem in u = P^T w on the
        # features X P = R^T is the same problem, of size n instead of d.
        self.span_basis: torch.Tensor | None = None
        if span:
            P, R = torch.linalg.qr(X.T)
            self.span_basis = P
            X = R.T.contiguous()
        if rotate:
            Xt = torch.cat([X, torch.ones(self.n, 1, device=X.device, dtype=X.dtype)], 1)
            _, Q = torch.linalg.eigh((Xt.T @ Xt).double())
            self.Q = Q.flip(1).to(X.dtype).contiguous()
            self.A = Xt @ self.Q
            del Xt
            self.q = self.Q[-1].clone()  # the bias, seen in rotated coordinates
        else:
            self.A = X
        self._A2: torch.Tensor | None = None

    @property
    def A2(self) -> torch.Tensor:
        if self._A2 is None:
            self._A2 = self.A * self.A
        return self._A2

    def zeros(self, n_heads: int) -> torch.Tensor:
        return torch.zeros(self.A.shape[1] + (0 if self.rotated else 1), n_heads, device=self.A.device)

    def margins(self, V: torch.Tensor) -> torch.Tensor:
        """X~ V, shape (n, H).

        Computed as (V^T A^T)^T: on CPU BLAS this is about twice as fast as A V for thin V.
        """
        if self.rotated:
            return (V.T @ self.A.T).T
        return (V[:-1].T @ self.A.T).T + V[-1]

    def back(self, U: torch.Tensor, A: torch.Tensor | None = None) -> torch.Tensor:
        """X~^T U for U of shape (n, H)."""
        A = self.A if A is None else A
        # U^T A (then transposed) is several times faster than A^T U for thin U on CPU BLAS.
        out = (U.T @ A).T
        return out if self.rotated else torch.cat([out, U.sum(0, keepdim=True)])

    def reg(self, V: torch.Tensor) -> torch.Tensor:
        """R V, where R is the identity except (1 - reg_bias) removed along the bias."""
        if self.reg_bias == 1.0:
            return V
        if self.rotated:
            return V - (1.0 - self.reg_bias) * self.q[:, None] * (self.q @ V)[None, :]
        out = V.clone()
        out[-1] *= self.reg_bias
        return out

    def reg_diag(self) -> torch.Tensor:
        diag = torch.ones(self.zeros(1).shape[0], device=self.A.device)
        if self.rotated:
            return diag - (1.0 - self.reg_bias) * self.q * self.q
        diag[-1] = self.reg_bias
        return diag

    def to_original(self, V: torch.Tensor) -> torch.Tensor:
        """[w; b] of shape (d + 1, H)."""
        V = self.Q @ V if self.rotated else V
        if self.span_basis is not None:
            V = torch.cat([self.span_basis @ V[:-1], V[-1:]])
        return V

    def preconditioner(self, C: float, curv: torch.Tensor) -> _Preconditioner:
        """M^-1 for every head: diag of its Hessian, plus (rotated) its exact leading block."""
        diag = self.reg_diag()[:, None] + C * self.back(curv, self.A2)
        if not self.rotated:
            # LIBLINEAR's mixed preconditioner (Hsia, Chiang & Lin 2018): robust in any basis.
            return _Preconditioner((0.99 + 0.01 * diag).clamp_(min=1e-12))
        diag = diag.clamp_(min=1e-12)
        r = min(_BLOCK, diag.shape[0])
        Ar = self.A[:, :r]
        reg_block = torch.eye(r, device=Ar.device)
        if self.reg_bias != 1.0:
            qr = self.q[:r]
            reg_block = reg_block - (1.0 - self.reg_bias) * torch.outer(qr, qr)
        blocks = torch.empty(curv.shape[1], r, r, device=Ar.device)
        for h0 in range(0, curv.shape[1], 16):
            cw = curv[:, h0 : h0 + 16].T  # (h, n)
            blocks[h0 : h0 + 16] = torch.matmul(Ar.T[None] * cw[:, None, :], Ar[None])
        blocks = reg_block[None] + C * blocks
        chol, info = torch.linalg.cholesky_ex(blocks)
        if bool((info != 0).any()):  # numerically indefinite block: keep the diagonal only
            return _Preconditioner(diag)
        return _Preconditioner(diag, chol)


class _Preconditioner:
    """Applies M^-1 column by column: a diagonal, with an optional exact leading block."""

    def __init__(self, diag: torch.Tensor, chol: torch.Tensor | None = None):
        self.diag, self.chol = diag, chol

    def __call__(self, R: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        diag = self.diag if cols is None else self.diag[:, cols]
        out = R / diag
        if self.chol is not None:
            chol = self.chol if cols is None else self.chol[cols]
            r = chol.shape[-1]
            out[:r] = torch.cholesky_solve(R[:r].T.unsqueeze(-1), chol).squeeze(-1).T
        return out


class _Heads:
    """A batch of binary problems sharing one design: +-1 targets and sample weights (n, H).

    Head h trains on the rows where ``S[:, h] > 0``, with labels ``Y[:, h]``. Weights carry class
    balancing, difficult (0) labels and fold membership.
    """

    def __init__(self, design: _Design, Y: torch.Tensor, S: torch.Tensor, loss: str):
        self.design, self.Y, self.S, self.loss = design, Y, S, loss

    def loss_terms(self, z: torch.Tensor, Y: torch.Tensor, S: torch.Tensor, need_curv: bool = True):
        """Per-head loss sums (float64), d loss / d z and the curvature weights D."""
        if self.loss == "squared_hinge":
            m = (1.0 - Y * z).clamp_(min=0.0)
            sm = S * m
            total = (sm * m).sum(0, dtype=torch.float64)
            dz = -2.0 * Y * sm
            curv = 2.0 * S * (m > 0) if need_curv else None
        else:
            yz = Y * z
            total = (S * torch.nn.functional.softplus(-yz)).sum(0, dtype=torch.float64)
            sig = torch.sigmoid(-yz)
            dz = -Y * S * sig
            curv = S * sig * (1.0 - sig) if need_curv else None
        return total, dz, curv

    def g0_norm(self) -> torch.Tensor:
        """Gradient norm of each head at V = 0, divided by C (the scale of the stopping test)."""
        _, dz, _ = self.loss_terms(torch.zeros_like(self.Y), self.Y, self.S, need_curv=False)
        return torch.linalg.vector_norm(self.design.back(dz), dim=0)


def _objective(heads: _Heads, V: torch.Tensor, z: torch.Tensor, C: float, cols=None):
    Y, S = (heads.Y, heads.S) if cols is None else (heads.Y[:, cols], heads.S[:, cols])
    total, dz, curv = heads.loss_terms(z, Y, S)
    reg = heads.design.reg(V)
    f = 0.5 * (V.double() * reg.double()).sum(0) + C * total
    g = reg + C * heads.design.back(dz)
    return f, g, curv


def _newton(
    heads: _Heads,
    C: float,
    V: torch.Tensor,
    g0_norm: torch.Tensor,
    tol: float,
    max_iter: int,
    max_cg: int = 500,
    cg_tol: float = 0.1,
    stats: dict | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Minimise every head's objective from the start point V.

    Returns the solution, the number of Newton iterations, and how many heads hit max_iter.
    """
    design = heads.design
    V = V.clone()
    z = design.margins(V)
    f, g, curv = _objective(heads, V, z, C)
    active = torch.ones(V.shape[1], dtype=torch.bool, device=V.device)
    threshold = tol * C * g0_norm
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        active &= torch.linalg.vector_norm(g, dim=0) > threshold
        if not bool(active.any()):
            return V, it - 1, 0
        cols = torch.nonzero(active).squeeze(1)
        Y, S = heads.Y[:, cols], heads.S[:, cols]
        g_a, curv_a = g[:, cols], curv[:, cols]
        step, n_cg = _pcg(design, C, g_a, curv_a, max_cg, cg_tol)
        if stats is not None:
            stats["cg"] = stats.get("cg", 0) + n_cg
            stats["newton"] = stats.get("newton", 0) + 1
        Xp = design.margins(step)
        V_a, z_a, f_a = V[:, cols], z[:, cols], f[cols]
        t = _line_search(heads, C, V_a, z_a, g_a, step, Xp, Y, S)
        V_new = V_a + t * step
        z_new = z_a + t * Xp
        f_new, g_new, curv_new = _objective(heads, V_new, z_new, C, cols)
        # A step that does not decrease the objective, or gains almost nothing relative to it,
        # means the head has reached what float32 arithmetic can resolve.
        decreased = f_new < f_a
        stalled = ~decreased | ((f_a - f_new) <= tol * f_new.abs())
        V[:, cols] = torch.where(decreased, V_new, V_a)
        z[:, cols] = torch.where(decreased, z_new, z_a)
        f[cols] = torch.where(decreased, f_new, f_a)
        g[:, cols] = torch.where(decreased, g_new, g_a)
        curv[:, cols] = torch.where(decreased, curv_new, curv_a)
        active[cols[stalled]] = False
    unconverged = int((active & (torch.linalg.vector_norm(g, dim=0) > threshold)).sum())
    return V, it, unconverged


def _pcg(
    design: _Design, C: float, g: torch.Tensor, curv: torch.Tensor, max_cg: int, rel_tol: float
) -> tuple[torch.Tensor, int]:
    """Solve (R + C X~^T D X~) p = -g for every column at once by preconditioned CG.

    Truncated (LIBLINEAR's rule): a column stops once its residual is ``rel_tol`` of ``|g|``.
    Finished columns are dropped from the matmuls once a quarter of them are done.
    """
    precond = design.preconditioner(C, curv)
    p = torch.zeros_like(g)
    cols = torch.arange(g.shape[1], device=g.device)
    r = -g
    zr = precond(r)
    d = zr.clone()
    rz = (r * zr).sum(0)
    stop = rel_tol * torch.linalg.vector_norm(g, dim=0)
    curv_c = curv
    k = 0
    for k in range(max_cg):  # noqa: B007 - the count is returned
        live = torch.linalg.vector_norm(r, dim=0) > stop
        n_live = int(live.sum())
        if n_live == 0:
            break
        if n_live < 0.75 * len(cols):
            keep = torch.nonzero(live).squeeze(1)
            cols, r, d, rz, stop, live = cols[keep], r[:, keep], d[:, keep], rz[keep], stop[keep], live[keep]
            curv_c = curv[:, cols]
        Hd = design.reg(d) + C * design.back(curv_c * design.margins(d))
        dHd = (d * Hd).sum(0)
        alpha = torch.where(live & (dHd > 0), rz / dHd.clamp(min=1e-30), torch.zeros_like(rz))
        p.index_add_(1, cols, alpha * d)
        r = r - alpha * Hd
        zr = precond(r, cols)
        rz_new = (r * zr).sum(0)
        beta = torch.where(live, rz_new / rz.clamp(min=1e-30), torch.zeros_like(rz))
        d = zr + beta * d
        rz = rz_new
    return p, k


def _line_search(heads, C, V, z, g, step, Xp, Y, S, max_steps: int = 20):
    """Exact line search per head: safeguarded 1-D Newton on phi'(t), O(n H) per trial.

    The objective along ``V + t p`` is convex in t; its derivatives only need ``z + t X p``,
    so no matmul is repeated.
    """
    reg = heads.design.reg
    step64 = step.double()
    vp = (reg(V).double() * step64).sum(0)
    pp = (reg(step).double() * step64).sum(0)
    slope0 = (g.double() * step64).sum(0)
    Xp2 = Xp * Xp
    t = torch.ones_like(vp)
    lo = torch.zeros_like(vp)
    hi = torch.full_like(vp, float("inf"))
    done = slope0 >= 0  # not a descent direction (numerical noise): t is irrelevant
    for _ in range(max_steps):
        _, dz, curv = heads.loss_terms(z + t.to(z.dtype) * Xp, Y, S)
        d1 = vp + t * pp + C * (dz * Xp).sum(0, dtype=torch.float64)
        d2 = pp + C * (curv * Xp2).sum(0, dtype=torch.float64)
        done |= d1.abs() <= 1e-4 * slope0.abs()
        if bool(done.all()):
            break
        lo = torch.where(d1 < 0, t, lo)
        hi = torch.where(d1 >= 0, t, hi)
        t_new = t - d1 / d2.clamp(min=1e-300)
        outside = (t_new <= lo) | (t_new >= hi)
        fallback = torch.where(torch.isinf(hi), 2 * t, 0.5 * (lo + hi))
        t = torch.where(done, t, torch.where(outside, fallback, t_new))
    return t.to(V.dtype)


# --------------------------------------------------------------------------- estimator


class LinearProbe(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear classifier on fixed features, C selected on validation data.

    Parameters: ``loss`` "squared_hinge" (LinearSVC) or "logistic" (LogisticRegression);
    ``Cs`` the grid (default ``np.logspace(-3, 3, 13)``); ``multilabel`` for (n, K) labels with
    1 = positive, -1 = negative, 0 = difficult (ignored in training and scoring);
    ``class_weight`` None or "balanced" (per binary head: positives weighted n / (2 n_pos),
    negatives n / (2 n_neg)); ``cv`` where C is chosen: a number of folds (seeded, stratified
    k-fold over the rows of ``X``), or a scikit-learn splitter / list of (train, eval) row
    indices, such as the ``PredefinedSplit`` from :func:`stack_validation` that selects C on a
    validation split stacked below the training rows; ``scoring``
    ``callable(y_true, scores) -> float`` (higher is better) replacing the default selection
    metric (accuracy, or mean non-interpolated AP for multilabel); ``device`` "auto", "cpu",
    "cuda"...; ``tol`` the solver's relative stopping test; ``seed`` fixes the folds;
    ``n_threads`` torch CPU threads during fit (None: one thread below 128k feature entries,
    else as many as there are idle cores at the start of the fit, measured, at least one). Ties in the selection
    go to the smallest C.

    After ``fit``: ``C_``, ``Cs_`` (sorted grid), ``cv_scores_`` (selection metric per C),
    ``selection_`` ("val" for one split, "k-fold", "k splits" or "none"), ``classes_``,
    ``coef_`` (K, d), ``intercept_`` (K,), ``n_iter_`` (Newton iterations) and ``solver_stats_``.

    A scikit-learn estimator: ``clone``, ``get_params`` / ``set_params``, ``Pipeline`` and
    ``cross_val_score`` drive it, and the validation split is a constructor parameter
    (``cv``), not extra ``fit`` arguments, so a clone or a cross-validation fold carries it
    and a ``Pipeline`` transforms the validation rows with the training rows. Bad input
    raises ``InvalidInput`` (a ``TransferlabError`` and a ``ValueError``). Which of
    ``sklearn.utils.estimator_checks`` pass, and why the others do not apply, is listed in
    tests/test_estimators.py.
    """

    def __init__(
        self,
        loss: str = "squared_hinge",
        Cs: Sequence[float] | np.ndarray | None = None,
        multilabel: bool = False,
        class_weight: str | None = None,
        device: str = "auto",
        cv: int | Any = 3,
        scoring: Callable[[np.ndarray, np.ndarray], float] | None = None,
        tol: float = 1e-6,
        max_iter: int = 100,
        seed: int = 0,
        n_threads: int | None = None,
    ):
        self.loss = loss
        self.Cs = Cs
        self.multilabel = multilabel
        self.class_weight = class_weight
        self.device = device
        self.cv = cv
        self.scoring = scoring
        self.tol = tol
        self.max_iter = max_iter
        self.seed = seed
        self.n_threads = n_threads

    # ---------------------------------------------------------------- public API

    def fit(self, X, y, *, groups=None) -> LinearProbe:
        """Choose C (on the ``cv`` split(s) of ``X``), then refit on all of ``X`` with it.

        ``groups`` (one id per row) keeps rows of one group in one fold, e.g. an image and its
        mirror, so k-fold selection never evaluates on a copy of a training row; a splitter
        given as ``cv`` receives it as ``split(X, y, groups)``.
        """
        Cs = self._check_params()
        X = _check_X(X, "X")
        device = resolve_device(self.device)
        threads = self.n_threads
        if threads is None and device.type == "cpu":
            threads = 1 if X.size < _SMALL_PROBLEM else _default_threads()
        with _torch_threads(threads):
            self._fit(Cs, device, X, y, groups)
        self.solver_stats_["threads"] = threads if threads is not None else torch.get_num_threads()
        return self

    def _fit(self, Cs, device, X_all: np.ndarray, y, groups=None) -> LinearProbe:
        y_all = self._check_y(y, len(X_all), "y")
        n_rows = len(X_all)
        splits = None if self._kfold() else self._splits(y_all, groups)
        Y_all, L_all = self._encode_fit(y_all, splits)
        Xt = torch.from_numpy(X_all).to(device)
        Yt = torch.from_numpy(Y_all).to(device)
        Lt = torch.from_numpy(L_all).to(device)
        n_classes = Y_all.shape[1]
        # With fewer rows than dimensions the problem is first reduced to the row space (size
        # n). The rotation is a change of basis only (same solution); it pays for itself when
        # the (reduced) dimension is moderate. The validation rows may enter both: nothing is
        # learnt from them there (a fold's solution lies in the span of its own rows, a subset).
        span = len(Xt) < Xt.shape[1]
        width = len(Xt) if span else Xt.shape[1]
        design = _Design(Xt, 1.0 if self.loss == "squared_hinge" else 0.0, width + 1 <= _ROTATE_MAX_DIM, span)
        self.solver_stats_: dict[str, int] = {"reduced": int(span), "rotated": int(design.rotated)}

        self.Cs_ = Cs
        self.n_iter_ = 0
        if len(Cs) == 1:
            self.selection_ = "none"
            self.cv_scores_ = np.full(1, np.nan)
            best_C, V0 = float(Cs[0]), None
        else:
            if splits is not None:
                self.selection_ = "val" if len(splits) == 1 else f"{len(splits)} splits"
                fold_train = [train for train, _ in splits]
                fold_eval = [held for _, held in splits]
            else:
                self.selection_ = f"{self.cv}-fold"
                fold_of = self._folds(y_all, n_rows, groups)
                fold_train = [fold_of != k for k in range(self.cv)]
                fold_eval = [fold_of == k for k in range(self.cv)]
            masks = torch.from_numpy(np.stack(fold_train, 1).astype(np.float32)).to(device)
            # Heads are (fold, class) pairs, laid out fold-major.
            S = torch.cat([Lt * masks[:, k : k + 1] for k in range(len(fold_train))], 1)
            Y = Yt.repeat(1, len(fold_train))
            heads = _Heads(design, Y, self._weights(Y, S), self.loss)
            scores = np.empty(len(Cs))
            best_V, best_score = None, -np.inf
            V = design.zeros(Y.shape[1])
            g0 = heads.g0_norm()
            for i, C in enumerate(Cs):
                V = self._solve(heads, float(C), V, g0)
                z = design.margins(V).cpu().numpy()
                per_fold = []
                for k, eval_rows in enumerate(fold_eval):
                    block = z[eval_rows][:, k * n_classes : (k + 1) * n_classes]
                    per_fold.append(self._score(y_all[eval_rows], block))
                scores[i] = float(np.nanmean(per_fold)) if not np.all(np.isnan(per_fold)) else np.nan
                # keep the best solution so far only; a strict improvement keeps the first
                # maximum, i.e. the smallest C among ties, as nanargmax below does
                if not np.isnan(scores[i]) and (best_V is None or scores[i] > best_score):
                    best_V, best_score = V, scores[i]
            if np.all(np.isnan(scores)):
                raise InvalidInput("LinearProbe: the selection metric is undefined for every C")
            best = int(np.nanargmax(scores))  # first maximum = smallest C among ties
            self.cv_scores_ = scores
            best_C = float(Cs[best])
            V0 = best_V.reshape(-1, len(fold_train), n_classes).mean(1)
            del heads, best_V
        heads = _Heads(design, Yt, self._weights(Yt, Lt), self.loss)
        if V0 is None:
            V0 = design.zeros(n_classes)
        V = self._solve(heads, best_C, V0, heads.g0_norm())
        V = design.to_original(V).cpu().numpy()
        self.C_ = best_C
        self.coef_ = np.ascontiguousarray(V[:-1].T)
        self.intercept_ = V[-1].copy()
        self.n_features_in_ = X_all.shape[1]
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores (n, K), one column per class / label, in ``classes_`` order."""
        self._check_fitted()
        X = _check_X(X, "X")
        check_width(self, X)
        return (X @ self.coef_.T + self.intercept_).astype(np.float32)

    def predict(self, X) -> np.ndarray:
        """Class labels (single-label) or a (n, K) int8 matrix of +1 / -1 (multilabel)."""
        scores = self.decision_function(X)
        if self.multilabel:
            return np.where(scores > 0, 1, -1).astype(np.int8)
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, X, y) -> float:
        """Accuracy (single-label) or mean non-interpolated AP (multilabel) on labelled data.

        Raises if ``y`` holds a class the probe never saw in training.
        """
        self._check_fitted()
        X = _check_X(X, "X")
        y = self._check_y(y, len(X), "y")
        if not self.multilabel:
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if len(unseen):
                raise InvalidInput(
                    f"LinearProbe.score: labels {unseen[:10].tolist()} were not in the training labels"
                )
        elif y.shape[1] != len(self.classes_):
            raise InvalidInput(f"LinearProbe.score: y has {y.shape[1]} label columns, trained with {len(self.classes_)}")
        return _default_score(y, self.decision_function(X), self.classes_, self.multilabel)

    # ---------------------------------------------------------------- internals

    def _check_params(self) -> np.ndarray:
        if self.loss not in LOSSES:
            raise InvalidInput(f"LinearProbe: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.class_weight not in (None, "balanced"):
            raise InvalidInput(f"LinearProbe: class_weight must be None or 'balanced', got {self.class_weight!r}")
        if isinstance(self.cv, bool) or (self._kfold() and self.cv < 2) or not (
            self._kfold() or hasattr(self.cv, "split") or isinstance(self.cv, (list, tuple))
        ):
            raise InvalidInput(
                "LinearProbe: cv must be a number of folds >= 2, a splitter with split(X, y, groups) "
                f"(e.g. from stack_validation) or a list of (train, eval) row indices, got {self.cv!r}"
            )
        if not (self.tol > 0 and self.max_iter >= 1):
            raise InvalidInput("LinearProbe: tol must be > 0 and max_iter >= 1")
        if self.n_threads is not None and (isinstance(self.n_threads, bool) or not isinstance(self.n_threads, (int, np.integer)) or self.n_threads < 1):
            raise InvalidInput(f"LinearProbe: n_threads must be a positive integer or None, got {self.n_threads!r}")
        if self.scoring is not None and not callable(self.scoring):
            raise InvalidInput("LinearProbe: scoring must be callable(y_true, scores) -> float")
        Cs = DEFAULT_CS if self.Cs is None else self.Cs
        try:
            Cs = np.asarray(Cs, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidInput(f"LinearProbe: Cs must be a list of positive numbers, got {self.Cs!r}") from None
        if len(Cs) == 0:
            raise InvalidInput("LinearProbe: the C grid is empty")
        bad = Cs[~(np.isfinite(Cs) & (Cs > 0))]
        if len(bad):
            raise InvalidInput(f"LinearProbe: C values must be positive and finite, got {bad.tolist()}")
        return np.unique(Cs)  # sorted ascending: the warm-start path

    def _check_y(self, y, n: int, name: str) -> np.ndarray:
        if y is None:
            raise InvalidInput(f"LinearProbe requires y to be passed, but the target y is None ({name})")
        y = np.asarray(y)
        if not self.multilabel and y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                f"A column-vector y was passed when a 1d array was expected ({name} of shape {y.shape}); "
                "using y.ravel()",
                DataConversionWarning,
                stacklevel=3,
            )
            y = y.ravel()
        if len(y) != n:
            raise InvalidInput(f"{name}: {len(y)} labels for {n} feature rows")
        if self.multilabel:
            if y.ndim != 2:
                raise InvalidInput(f"{name}: multilabel labels must be (n, K) with 1 / -1 / 0, got shape {y.shape}")
            if not np.isin(y, (-1, 0, 1)).all():
                bad = np.setdiff1d(np.unique(y), [-1, 0, 1])
                raise InvalidInput(f"{name}: multilabel values must be 1, -1 or 0 (difficult), found {bad[:5].tolist()}")
            return y.astype(np.int8)
        if y.ndim != 1:
            raise InvalidInput(f"{name}: single-label y must be 1-D, got shape {y.shape} (use multilabel=True)")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InvalidInput(f"{name}: labels contain NaN/inf (first at row {int(np.argmin(np.isfinite(y)))})")
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise InvalidInput(f"{name}: Unknown label type: continuous (class labels must be whole numbers or names)")
        return y

    def _kfold(self) -> bool:
        """True when ``cv`` is a number of folds (the probe's own seeded, stratified k-fold)."""
        return isinstance(self.cv, (int, np.integer))

    def _splits(self, y: np.ndarray, groups) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, eval) row masks of each split of a ``cv`` splitter or list of index pairs."""
        n = len(y)
        test_fold = getattr(self.cv, "test_fold", None)  # PredefinedSplit: one entry per row
        if test_fold is not None and len(test_fold) != n:
            raise InvalidInput(f"LinearProbe: the cv split is for {len(test_fold)} rows, X has {n}")
        if hasattr(self.cv, "split"):
            pairs = list(self.cv.split(np.zeros((n, 1)), y, groups))
        else:
            pairs = list(self.cv)
        splits = []
        for k, pair in enumerate(pairs):
            try:
                train_rows, eval_rows = (np.asarray(part).reshape(-1) for part in pair)
            except (TypeError, ValueError):
                raise InvalidInput(f"LinearProbe: cv split {k} is not a (train, eval) pair of row indices") from None
            masks = []
            for rows in (train_rows, eval_rows):
                if rows.dtype == bool and len(rows) == n:
                    rows = np.flatnonzero(rows)
                if len(rows) == 0 or rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= n:
                    raise InvalidInput(f"LinearProbe: cv split {k} has empty or out-of-range rows for {n} rows of X")
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                masks.append(mask)
            if not self.multilabel:
                unseen = np.setdiff1d(np.unique(y[masks[1]]), np.unique(y[masks[0]]))
                if len(unseen):
                    raise InvalidInput(
                        f"y: classes {unseen[:10].tolist()} appear in validation but not in training "
                        f"(the eval and train rows of cv split {k})"
                    )
            splits.append((masks[0], masks[1]))
        if not splits:
            raise InvalidInput("LinearProbe: the cv splitter gave no split")
        return splits

    def _encode_fit(self, y: np.ndarray, splits) -> tuple[np.ndarray, np.ndarray]:
        """+-1 targets and 0/1 'labelled' masks (n, K) for every row."""
        train = y if splits is None or len(splits) != 1 else y[splits[0][0]]
        if self.multilabel:
            if not (train == -1).any():
                raise InvalidInput(
                    "y: multilabel training labels contain no -1; labels must be 1 = positive, -1 = negative, "
                    "0 = difficult (ignored). For a 0/1 indicator matrix pass 2 * Y - 1"
                )
            self.classes_ = np.arange(y.shape[1])
            for k in range(y.shape[1]):
                n_pos, n_neg = int((train[:, k] == 1).sum()), int((train[:, k] == -1).sum())
                if n_pos == 0 or n_neg == 0:
                    warnings.warn(
                        f"LinearProbe: label column {k} has {n_pos} positive and {n_neg} negative training "
                        "samples; its head can only predict one side",
                        UserWarning,
                        stacklevel=3,
                    )
            Y = np.where(y == 1, 1.0, -1.0).astype(np.float32)
            L = (y != 0).astype(np.float32)
            return Y, L
        classes = np.unique(train)
        if len(classes) < 2:
            raise InvalidInput(
                f"y: the training set has a single class ({classes.tolist()}); a classifier needs more than one class"
            )
        self.classes_ = np.unique(y)
        idx = np.searchsorted(self.classes_, y)
        Y = -np.ones((len(y), len(self.classes_)), dtype=np.float32)
        Y[np.arange(len(y)), idx] = 1.0
        return Y, np.ones_like(Y)

    def _folds(self, y: np.ndarray, n: int, groups=None) -> np.ndarray:
        """Fold index per training row: stratified for single-label, random for multilabel;
        with ``groups``, folds are drawn per group (labelled by its first row)."""
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (n,):
                raise InvalidInput(f"LinearProbe.fit: groups needs one id per training row ({n}), got {groups.shape}")
            _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
            return self._folds(y[first], len(first))[inverse]
        if n < self.cv:
            raise InvalidInput(f"LinearProbe: {n} training samples cannot be split into {self.cv} folds")
        rng = np.random.default_rng(self.seed)
        fold_of = np.empty(n, dtype=np.int64)
        if self.multilabel:
            fold_of[rng.permutation(n)] = np.arange(n) % self.cv
            return fold_of
        offset = 0
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            fold_of[members] = (np.arange(len(members)) + offset) % self.cv
            offset += len(members)
        return fold_of

    def _weights(self, Y: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        if self.class_weight != "balanced":
            return S
        pos = ((Y > 0) * S).sum(0)
        neg = ((Y < 0) * S).sum(0)
        total = pos + neg
        w_pos = torch.where(pos > 0, total / (2 * pos.clamp(min=1)), torch.zeros_like(pos))
        w_neg = torch.where(neg > 0, total / (2 * neg.clamp(min=1)), torch.zeros_like(neg))
        return S * torch.where(Y > 0, w_pos, w_neg)

    def _solve(self, heads: _Heads, C: float, V: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
        V, n_iter, unconverged = _newton(heads, C, V, g0, self.tol, self.max_iter, stats=self.solver_stats_)
        self.n_iter_ += n_iter
        if unconverged:
            warnings.warn(
                f"LinearProbe: {unconverged} of {V.shape[1]} heads did not converge at C={C:g} "
                f"within max_iter={self.max_iter} Newton iterations",
                UserWarning,
                stacklevel=3,
            )
        return V

    def _score(self, y_true: np.ndarray, scores: np.ndarray) -> float:
        if self.scoring is not None:
            return float(self.scoring(y_true, scores))
        return _default_score(y_true, scores, self.classes_, self.multilabel)

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFitted("LinearProbe: call fit before predict / decision_function / score")


def stack_validation(X, y, X_val, y_val) -> tuple[np.ndarray, np.ndarray, PredefinedSplit]:
    """One ``(X, y)`` of the training rows then the validation rows, and the ``cv`` for it.

    ``X, y, cv = stack_validation(X_train, y_train, X_val, y_val)`` then
    ``LinearProbe(cv=cv).fit(X, y)`` trains each C on the training rows, chooses C on the
    validation rows and refits on all rows.
    """
    from sklearn.model_selection import PredefinedSplit

    if X_val is None or y_val is None:
        raise InvalidInput("stack_validation: give both X_val and y_val")
    X, X_val = _check_X(X, "X"), _check_X(X_val, "X_val")
    if X_val.shape[1] != X.shape[1]:
        raise InvalidInput(f"X_val has {X_val.shape[1]} features but X has {X.shape[1]}")
    y, y_val = np.asarray(y), np.asarray(y_val)
    if len(y) != len(X) or len(y_val) != len(X_val):
        raise InvalidInput(
            f"stack_validation: {len(y)} labels for {len(X)} training rows, "
            f"{len(y_val)} for {len(X_val)} validation rows"
        )
    if y.shape[1:] != y_val.shape[1:]:
        raise InvalidInput(f"y_val has label shape {y_val.shape[1:]} but y has {y.shape[1:]}")
    split = PredefinedSplit(np.concatenate([np.full(len(X), -1), np.zeros(len(X_val), dtype=np.int64)]))
    return np.concatenate([X, X_val]), np.concatenate([y, y_val]), split


def _check_X(X, name: str) -> np.ndarray:
    return check_features(X, name)


def _default_threads() -> int:
    """As many torch threads as the machine has idle cores right now (at least one).

    The solver runs thousands of short ops; a thread that has no free core to run on makes
    every op wait for it (on a busy 2-core machine two threads measured up to 5x slower than
    one), while on an idle machine each extra core cuts the time almost proportionally. So
    the idle cores are measured (``idle_cores``) instead of assuming either machine.
    """
    return max(1, min(torch.get_num_threads(), usable_cores(), round(idle_cores())))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores(window: float = 0.05) -> float:
    """Cores left idle by every other process, measured over ``window`` seconds.

    Linux: the idle share of ``/proc/stat``'s CPU time across the window (this process sleeps
    meanwhile, so it counts itself as idle). Elsewhere: usable cores minus the 1-minute load.
    """
    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle + iowait, total

    cores = usable_cores()
    first = sample()
    if first is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except (AttributeError, OSError):
            return float(cores)
    time.sleep(window)
    second = sample()
    total = second[1] - first[1] if second else 0
    if total <= 0:
        return float(cores)
    return min(cores, (os.cpu_count() or cores) * (second[0] - first[0]) / total)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _default_score(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray, multilabel: bool) -> float:
    if not multilabel:
        return float(np.mean(classes[np.argmax(scores, axis=1)] == y_true))
    from transferlab.metrics import average_precision

    aps = [average_precision(scores[:, k], y_true[:, k]) for k in range(y_true.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")
