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

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning

from transferlab.device import resolve_device
from transferlab.errors import InvalidInput
from transferlab.features.postprocess import NotFitted, check_features, check_width
from transferlab.heads.cpu_threads import (  # noqa: F401  (re-exported)
    SMALL_PROBLEM,
    default_threads,
    idle_cores,
    torch_threads,
    usable_cores,
)
from transferlab.heads.probe_grid import DEFAULT_CS
from transferlab.heads.probe_solver import KERNEL_ROTATE_MAX_ROWS, ROTATE_MAX_DIM, BlockSchedule, Design, Heads, newton

if TYPE_CHECKING:
    from sklearn.model_selection import PredefinedSplit

LOSSES = ("squared_hinge", "logistic")


# --------------------------------------------------------------------------- estimator


class LinearProbe(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear classifier on fixed features, C selected on validation data.

    Parameters: ``loss`` "squared_hinge" (LinearSVC) or "logistic" (LogisticRegression);
    ``Cs`` the grid (default ``DEFAULT_CS``: 0.01, 0.1, 1, 10, 100); ``multilabel`` for (n, K) labels with
    1 = positive, -1 = negative, 0 = difficult (ignored in training and scoring);
    ``class_weight`` None or "balanced" (per binary head: positives weighted n / (2 n_pos),
    negatives n / (2 n_neg)); ``cv`` where C is chosen: a number of folds (seeded, stratified
    k-fold over the rows of ``X``), or a scikit-learn splitter / list of (train, eval) row
    indices, such as the ``PredefinedSplit`` from :func:`stack_validation` that selects C on a
    validation split stacked below the training rows; ``scoring``
    ``callable(y_true, scores) -> float`` (higher is better) replacing the default selection
    metric (accuracy, or mean non-interpolated AP for multilabel); ``device`` "auto", "cpu",
    "cuda"...; ``tol`` the solver's relative stopping test; ``seed`` fixes the folds;
    ``n_threads`` torch CPU threads during fit (None: one thread below 16k feature entries,
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
            threads = 1 if X.size < SMALL_PROBLEM else default_threads()
        # inference mode: no autograd bookkeeping on the solver's thousands of short ops (5-10 %)
        with torch_threads(threads), torch.inference_mode():
            self._fit(Cs, device, X, y, groups)
        self.solver_stats_["threads"] = threads if threads is not None else torch.get_num_threads()
        return self

    def _fit(self, Cs, device, X_all: np.ndarray, y, groups=None) -> LinearProbe:
        y_all = self._check_y(y, len(X_all), "y")
        n_rows = len(X_all)
        splits = None if self._kfold() else self._splits(y_all, groups)
        Y_all, L_all = self._encode_fit(y_all, splits)
        Xt = _tensor(X_all).to(device)
        Yt = torch.from_numpy(Y_all).to(device)
        Lt = torch.from_numpy(L_all).to(device)
        n_classes = Y_all.shape[1]
        # With fewer rows than dimensions the problem is first reduced to the row space (size
        # n). The rotation is a change of basis only (same solution); it pays for itself when
        # the (reduced) dimension is moderate. The validation rows may enter both: nothing is
        # learnt from them there (a fold's solution lies in the span of its own rows, a subset).
        span = len(Xt) < Xt.shape[1]
        reg_bias = 1.0 if self.loss == "squared_hinge" else 0.0
        if span and reg_bias == 1.0:  # rotated through the n x n kernel (see KERNEL_ROTATE_MAX_ROWS)
            rotate = len(Xt) <= KERNEL_ROTATE_MAX_ROWS
        else:
            rotate = (len(Xt) if span else Xt.shape[1]) + 1 <= ROTATE_MAX_DIM
        design = Design(Xt, reg_bias, rotate, span)
        self.solver_stats_: dict[str, int] = {"reduced": int(span), "rotated": int(design.rotated)}
        schedule = BlockSchedule(design)  # which Cs of this path get the block preconditioner

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
            heads = Heads(design, Y, self._weights(Y, S), self.loss)
            scores = np.empty(len(Cs))
            best_V, best_score = None, -np.inf
            V = design.zeros(Y.shape[1])
            g0 = heads.g0_norm()
            for i, C in enumerate(Cs):
                V = self._solve(heads, float(C), V, g0, schedule)
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
            assert best_V is not None  # some C scored (all-NaN raised above)
            V0 = best_V.reshape(-1, len(fold_train), n_classes).mean(1)
            del heads, best_V
        heads = Heads(design, Yt, self._weights(Yt, Lt), self.loss)
        if V0 is None:
            V0 = design.zeros(n_classes)
        solved = design.to_original(self._solve(heads, best_C, V0, heads.g0_norm(), schedule)).cpu().numpy()
        self.C_ = best_C
        self.coef_ = np.ascontiguousarray(solved[:-1].T)
        self.intercept_ = solved[-1].copy()
        self.n_features_in_ = X_all.shape[1]
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores (n, K), one column per class / label, in ``classes_`` order.

        Multiplied by torch, not numpy: numpy's OpenBLAS workers keep spinning ~0.1-0.3 s
        after a threaded matmul, and a fit started meanwhile (the next C, source or layer)
        shares the cores with them: on 2 cores a 600 x 192 fit took 0.15 s instead of 0.075.
        """
        self._check_fitted()
        X = _check_X(X, "X")
        check_width(self, X)
        with torch.inference_mode():
            scores = torch.addmm(_tensor(self.intercept_), _tensor(X), _tensor(self.coef_).T)
        return scores.numpy()

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
            raise InvalidInput(
                f"LinearProbe.score: y has {y.shape[1]} label columns, trained with {len(self.classes_)}")
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
        threads = self.n_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
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
                raise InvalidInput(
                    f"{name}: multilabel values must be 1, -1 or 0 (difficult), found {bad[:5].tolist()}")
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
            pairs = list(self.cv)  # type: ignore[arg-type]  # here cv is an iterable of (train, test) pairs
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

    def _solve(self, heads: Heads, C: float, V: torch.Tensor, g0: torch.Tensor,
               schedule: BlockSchedule | None = None) -> torch.Tensor:
        V, n_iter, unconverged = newton(heads, C, V, g0, self.tol, self.max_iter, stats=self.solver_stats_,
                                        schedule=schedule)
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


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory; read-only arrays (memory-mapped caches) are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_X(X, name: str) -> np.ndarray:
    return check_features(X, name)


def _default_score(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray, multilabel: bool) -> float:
    if not multilabel:
        return float(np.mean(classes[np.argmax(scores, axis=1)] == y_true))
    from transferlab.metrics import average_precision

    aps = [average_precision(scores[:, k], y_true[:, k]) for k in range(y_true.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")
