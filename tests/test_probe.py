"""LinearProbe against scikit-learn on real features (digits pixels and a ReLU projection)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from transferlab.errors import TransferlabError
from transferlab.heads.probe import LinearProbe, stack_validation
from transferlab.metrics import average_precision


def fit_with_val(probe: LinearProbe, X, y, X_val, y_val) -> LinearProbe:
    """C chosen on (X_val, y_val), then refit on train + val: the probe's validation path."""
    X_all, y_all, split = stack_validation(X, y, X_val, y_val)
    return probe.set_params(cv=split).fit(X_all, y_all)


@pytest.fixture(scope="module", autouse=True)
def single_threaded_blas():
    """The scikit-learn references are small: BLAS threads only add waiting on shared cores."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits():
    """Real 8x8 digit images (64 pixel features in [0, 1]), split train / val / test."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    tr, va, te = order[:900], order[900:1300], order[1300:]
    return X[tr], y[tr], X[va], y[va], X[te], y[te]


@pytest.fixture(scope="module")
def relu_digits(digits):
    """~500-dim features: ReLU of a fixed random projection of the digit pixels."""
    projection = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32) / 8.0
    return tuple(np.maximum(part @ projection, 0) if part.ndim == 2 else part for part in digits)


def svm_objective(W, b, X, Y, C, weights=None):
    """LinearSVC's primal per class: 0.5 ||[w, b]||^2 + C sum s_i max(0, 1 - y_i f(x_i))^2."""
    X = X.astype(np.float64)
    margins = np.maximum(0.0, 1.0 - Y * (X @ np.asarray(W, np.float64).T + b))
    s = np.ones_like(Y) if weights is None else weights
    return (0.5 * (np.asarray(W, np.float64) ** 2).sum(1) + 0.5 * np.asarray(b, np.float64) ** 2
            + C * (s * margins**2).sum(0))


def logistic_objective(W, b, X, Y, C):
    """LogisticRegression's primal per class: 0.5 ||w||^2 + C sum log(1 + exp(-y_i f(x_i)))."""
    W = np.asarray(W, np.float64)
    z = Y * (X.astype(np.float64) @ W.T + b)
    return 0.5 * (W**2).sum(1) + C * np.logaddexp(0.0, -z).sum(0)


def one_vs_rest(y, classes):
    return np.where(y[:, None] == classes[None, :], 1.0, -1.0)


@pytest.mark.parametrize("C", [0.1, 10.0])
def test_squared_hinge_matches_linearsvc_on_pixels(digits, C):
    Xtr, ytr, _, _, Xte, yte = digits
    probe = LinearProbe(Cs=[C], device="cpu").fit(Xtr, ytr)
    ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr, ytr)
    assert abs(probe.score(Xte, yte) - ref.score(Xte, yte)) <= 0.005
    Y = one_vs_rest(ytr, probe.classes_)
    ours = svm_objective(probe.coef_, probe.intercept_, Xtr, Y, C)
    theirs = svm_objective(ref.coef_, ref.intercept_, Xtr, Y, C)
    # Same objective, same minimiser: ours is never meaningfully above LinearSVC's.
    assert np.all(ours <= theirs * (1 + 1e-4) + 1e-6)
    np.testing.assert_allclose(probe.coef_, ref.coef_, atol=0.02 * np.abs(ref.coef_).max())


def test_squared_hinge_matches_linearsvc_on_relu_features(relu_digits):
    Xtr, ytr, _, _, Xte, yte = relu_digits
    C = 1.0
    probe = LinearProbe(Cs=[C], device="cpu").fit(Xtr, ytr)
    ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr, ytr)
    assert abs(probe.score(Xte, yte) - ref.score(Xte, yte)) <= 0.005
    Y = one_vs_rest(ytr, probe.classes_)
    ours = svm_objective(probe.coef_, probe.intercept_, Xtr, Y, C)
    theirs = svm_objective(ref.coef_, ref.intercept_, Xtr, Y, C)
    assert np.all(ours <= theirs * (1 + 1e-4))


@pytest.mark.parametrize("kernel_rows", [None, 100])
def test_fewer_samples_than_features_matches_in_both_bases(relu_digits, kernel_rows, monkeypatch):
    """n < d: the hinge is rotated through the n x n kernel (default) or, with more rows than
    KERNEL_ROTATE_MAX_ROWS, reduced by QR and solved with the diagonal preconditioner; the
    logistic loss (free bias) always takes the QR reduction. Every path must be exact."""
    import transferlab.heads.probe as probe_module

    if kernel_rows is not None:
        monkeypatch.setattr(probe_module, "KERNEL_ROTATE_MAX_ROWS", kernel_rows)
    Xtr, ytr, _, _, Xte, yte = relu_digits
    X, y = Xtr[:300], ytr[:300]
    probe = LinearProbe(Cs=[0.5], device="cpu").fit(X, y)
    assert probe.solver_stats_ == {**probe.solver_stats_, "reduced": 1, "rotated": int(kernel_rows is None)}
    ref = LinearSVC(C=0.5, tol=1e-6, max_iter=50000).fit(X, y)
    assert abs(probe.score(Xte, yte) - ref.score(Xte, yte)) <= 0.005
    Y = one_vs_rest(y, probe.classes_)
    ours = svm_objective(probe.coef_, probe.intercept_, X, Y, 0.5)
    theirs = svm_objective(ref.coef_, ref.intercept_, X, Y, 0.5)
    assert np.all(ours <= theirs * (1 + 1e-4))
    logistic = LinearProbe(loss="logistic", Cs=[0.5], device="cpu").fit(X, y)
    ref = OneVsRestClassifier(LogisticRegression(C=0.5, tol=1e-6, max_iter=10000)).fit(X, y)
    W = np.stack([est.coef_[0] for est in ref.estimators_])
    b = np.array([est.intercept_[0] for est in ref.estimators_])
    ours = logistic_objective(logistic.coef_, logistic.intercept_, X, Y, 0.5)
    assert np.all(ours <= logistic_objective(W, b, X, Y, 0.5) * (1 + 1e-5))


@pytest.fixture(scope="module")
def wide_digits(digits):
    """n < d twice over: 2304-dim ReLU features (wider than the rotation limit) of 400 digits."""
    Xtr, ytr, Xva, yva, Xte, yte = digits
    projection = np.random.default_rng(2).standard_normal((64, 2304)).astype(np.float32) / 8.0
    relu = [np.maximum(part @ projection, 0) for part in (Xtr[:400], Xva[:200], Xte)]
    relu = [part / np.linalg.norm(part, axis=1, keepdims=True) for part in relu]
    return relu[0], ytr[:400], relu[1], yva[:200], relu[2], yte


@pytest.mark.parametrize("C", [0.05, 5.0])
def test_row_space_reduction_matches_linearsvc_when_rows_are_fewer_than_dims(wide_digits, C):
    Xtr, ytr, _, _, Xte, yte = wide_digits
    probe = LinearProbe(Cs=[C], device="cpu").fit(Xtr, ytr)
    assert probe.solver_stats_["reduced"] == 1 and probe.solver_stats_["rotated"] == 1
    assert probe.coef_.shape == (10, 2304)
    ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr, ytr)
    Y = one_vs_rest(ytr, probe.classes_)
    ours = svm_objective(probe.coef_, probe.intercept_, Xtr, Y, C)
    theirs = svm_objective(ref.coef_, ref.intercept_, Xtr, Y, C)
    assert np.all(ours <= theirs * (1 + 1e-4) + 1e-6)
    np.testing.assert_allclose(probe.coef_, ref.coef_, atol=0.02 * np.abs(ref.coef_).max())
    # identical predictions up to ties: disagreements only where LinearSVC's top two scores tie
    scores = np.sort(ref.decision_function(Xte), axis=1)
    differ = probe.predict(Xte) != ref.predict(Xte)
    assert np.all(scores[differ, -1] - scores[differ, -2] < 1e-2)
    assert differ.mean() <= 0.005


def test_kernel_rotation_drops_directions_the_data_does_not_span(digits):
    """60 distinct rows repeated 5 times, 2304-d: the kernel has rank 60 (of 300); the directions
    it drops carry nothing, so the solution still matches LinearSVC's objective."""
    Xtr, ytr, _, _, Xte, yte = digits
    projection = np.random.default_rng(3).standard_normal((64, 2304)).astype(np.float32) / 8.0
    X = np.repeat(np.maximum(Xtr[:60] @ projection, 0), 5, axis=0)
    y = np.repeat(ytr[:60], 5)
    C = 1.0
    probe = LinearProbe(Cs=[C], device="cpu").fit(X, y)
    assert probe.solver_stats_["reduced"] == 1 and probe.solver_stats_["rotated"] == 1
    ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(X, y)
    Y = one_vs_rest(y, probe.classes_)
    ours = svm_objective(probe.coef_, probe.intercept_, X, Y, C)
    assert np.all(ours <= svm_objective(ref.coef_, ref.intercept_, X, Y, C) * (1 + 1e-4) + 1e-6)
    np.testing.assert_allclose(probe.coef_, ref.coef_, atol=0.02 * np.abs(ref.coef_).max())


def test_row_space_reduction_is_exact_for_the_logistic_loss_with_a_free_bias(wide_digits):
    Xtr, ytr, _, _, Xte, yte = wide_digits
    C = 2.0
    probe = LinearProbe(loss="logistic", Cs=[C], device="cpu").fit(Xtr, ytr)
    assert probe.solver_stats_["reduced"] == 1
    ref = OneVsRestClassifier(LogisticRegression(C=C, tol=1e-8, max_iter=10000)).fit(Xtr, ytr)
    W = np.stack([est.coef_[0] for est in ref.estimators_])
    b = np.array([est.intercept_[0] for est in ref.estimators_])
    Y = one_vs_rest(ytr, probe.classes_)
    assert np.all(
        logistic_objective(probe.coef_, probe.intercept_, Xtr, Y, C) <= logistic_objective(W, b, Xtr, Y, C) * (1 + 1e-5)
    )
    np.testing.assert_allclose(probe.intercept_, b, atol=5e-3 * max(1.0, np.abs(b).max()))
    assert abs(probe.score(Xte, yte) - ref.score(Xte, yte)) <= 0.005


def test_row_space_reduction_selects_the_same_C_as_the_sklearn_loop(wide_digits):
    Xtr, ytr, Xva, yva, _, _ = wide_digits
    Cs = [1e-3, 1e-1, 10.0]
    probe = fit_with_val(LinearProbe(Cs=Cs, device="cpu"), Xtr, ytr, Xva, yva)
    accuracies = [LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr, ytr).score(Xva, yva) for C in Cs]
    assert probe.C_ == Cs[int(np.argmax(accuracies))]
    np.testing.assert_allclose(probe.cv_scores_, accuracies, atol=0.005)
    # the final model is the refit on train + val with the chosen C
    full = LinearProbe(Cs=[probe.C_], device="cpu").fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    np.testing.assert_allclose(probe.coef_, full.coef_, atol=1e-3 * np.abs(full.coef_).max())


def test_thread_count_changes_rounding_only(relu_digits):
    Xtr, ytr, Xva, yva, Xte, _ = relu_digits
    one = fit_with_val(LinearProbe(Cs=[0.1, 1.0], device="cpu", n_threads=1), Xtr, ytr, Xva, yva)
    two = fit_with_val(LinearProbe(Cs=[0.1, 1.0], device="cpu", n_threads=2), Xtr, ytr, Xva, yva)
    assert one.solver_stats_["threads"] == 1 and two.solver_stats_["threads"] == 2
    assert one.C_ == two.C_
    # Another thread count sums in another order; the solver then stops at another point of
    # its tolerance, where the objective is flat: equal objectives and predictions, weights
    # within 1e-3 of their scale (measured 1.8e-4; 1e-4 held on one CPU, not on another).
    Y = one_vs_rest(np.concatenate([ytr, yva]), one.classes_)
    X_all = np.concatenate([Xtr, Xva])
    ours, theirs = (svm_objective(p.coef_, p.intercept_, X_all, Y, p.C_) for p in (one, two))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert np.array_equal(one.predict(Xte), two.predict(Xte))
    np.testing.assert_allclose(one.coef_, two.coef_, atol=1e-3 * np.abs(one.coef_).max())
    default = LinearProbe(Cs=[1.0], device="cpu").fit(Xtr, ytr)
    assert 1 <= default.solver_stats_["threads"] <= max(1, __import__("os").cpu_count())


def test_idle_core_measurement_is_within_the_machine():
    from transferlab.heads.cpu_threads import idle_cores, usable_cores

    assert 0.0 <= idle_cores() <= usable_cores()


def test_idle_cores_do_not_count_this_process_as_load():
    """Our own busy threads (torch's OpenMP workers spin after a fit) are not another job's load:
    counted as load, a fit right after another one measured a busy core and ran on one thread."""
    import threading

    from transferlab.heads.cpu_threads import idle_cores

    before = idle_cores(0.3)
    stop = threading.Event()

    def burn() -> None:  # a tight loop of GIL-free BLAS calls: one busy core of this process
        a = np.ones((256, 256), dtype=np.float32)
        with threadpool_limits(limits=1):
            while not stop.is_set():
                a @ a

    worker = threading.Thread(target=burn)
    worker.start()
    try:
        during = idle_cores(0.3)
    finally:
        stop.set()
        worker.join()
    assert during >= before - 0.5, (before, during)


def test_default_threads_reuse_the_window_since_a_recent_measurement(monkeypatch):
    """Fits in a loop do not each sleep a fresh window: within RECENT seconds of the previous
    measurement the window since it is measured; an older one (or none) takes a fresh window."""
    import time

    from transferlab.heads import cpu_threads

    slept: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(cpu_threads.time, "sleep", recording_sleep)
    cpu_threads.idle_cores()  # a fresh window: sleeps
    assert slept == [0.05]
    real_sleep(0.06)  # longer than the window, well under RECENT
    assert 0.0 <= cpu_threads.idle_cores(reuse=True) <= cpu_threads.usable_cores()
    real_sleep(0.06)
    assert 1 <= cpu_threads.default_threads() <= cpu_threads.usable_cores()
    assert slept == [0.05]  # both measured the window since the previous call
    cpu_threads.idle_cores(reuse=True)  # the previous call ended under a window ago: too short
    assert slept == [0.05, 0.05]
    monkeypatch.setattr(cpu_threads, "RECENT", 0.0)  # every earlier measurement is stale now
    real_sleep(0.06)
    cpu_threads.idle_cores(reuse=True)
    assert slept == [0.05, 0.05, 0.05]


def test_a_first_fit_soon_after_the_import_does_not_sleep():
    """The import takes the first /proc/stat sample, so a process's first fit (the common case
    for the command line: import, load features, fit once) measures the window since then
    instead of sleeping 50 ms, a third of a 600 x 192 fit."""
    import subprocess
    import sys

    code = (
        "import time\n"
        "from transferlab.heads import cpu_threads\n"
        "time.sleep(0.1)\n"
        "def refuse(seconds): raise SystemExit('slept %s s' % seconds)\n"
        "cpu_threads.time.sleep = refuse\n"
        "print(cpu_threads.default_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 1 <= int(done.stdout.strip()) <= __import__("os").cpu_count()


@pytest.mark.parametrize(("features", "C"), [("digits", 1.0), ("relu_digits", 0.1)])
def test_logistic_matches_one_vs_rest_logistic_regression(features, C, request):
    Xtr, ytr, _, _, Xte, yte = request.getfixturevalue(features)
    probe = LinearProbe(loss="logistic", Cs=[C], device="cpu").fit(Xtr, ytr)
    ref = OneVsRestClassifier(LogisticRegression(C=C, tol=1e-6, max_iter=10000)).fit(Xtr, ytr)
    assert abs(probe.score(Xte, yte) - ref.score(Xte, yte)) <= 0.005
    W = np.stack([est.coef_[0] for est in ref.estimators_])
    b = np.array([est.intercept_[0] for est in ref.estimators_])
    np.testing.assert_allclose(probe.coef_, W, atol=5e-3 * np.abs(W).max())
    Y = one_vs_rest(ytr, probe.classes_)
    ours = logistic_objective(probe.coef_, probe.intercept_, Xtr, Y, C)
    theirs = logistic_objective(W, b, Xtr, Y, C)
    assert np.all(ours <= theirs * (1 + 1e-5))


def test_binary_problem_matches_linearsvc(digits):
    Xtr, ytr, _, _, Xte, yte = digits
    keep_tr, keep_te = np.isin(ytr, (3, 8)), np.isin(yte, (3, 8))
    probe = LinearProbe(Cs=[1.0], device="cpu").fit(Xtr[keep_tr], ytr[keep_tr])
    ref = LinearSVC(C=1.0, tol=1e-6, max_iter=50000).fit(Xtr[keep_tr], ytr[keep_tr])
    np.testing.assert_array_equal(probe.predict(Xte[keep_te]), ref.predict(Xte[keep_te]))
    # The two one-vs-rest heads of a binary problem are exact negatives of each other.
    np.testing.assert_allclose(probe.coef_[0], -probe.coef_[1], atol=1e-4)
    np.testing.assert_allclose(probe.coef_[1], ref.coef_[0], atol=0.02 * np.abs(ref.coef_).max())


def multilabel_from_digits(y, rng):
    """Three overlapping labels per digit image, with some entries marked difficult (0)."""
    Y = np.stack([np.where(y % 2 == 0, 1, -1), np.where(y < 5, 1, -1), np.where(np.isin(y, (1, 4, 7)), 1, -1)], 1)
    difficult = rng.random(Y.shape) < 0.1
    return np.where(difficult, 0, Y).astype(np.int8)


def test_multilabel_ignores_difficult_and_matches_per_label_linearsvc(digits):
    Xtr, ytr, _, _, Xte, yte = digits
    rng = np.random.default_rng(3)
    Ytr, Yte = multilabel_from_digits(ytr, rng), multilabel_from_digits(yte, rng)
    C = 0.5
    probe = LinearProbe(Cs=[C], multilabel=True, device="cpu").fit(Xtr, Ytr)
    scores = probe.decision_function(Xte)
    for k in range(Ytr.shape[1]):
        rows = Ytr[:, k] != 0  # LinearSVC sees only the labelled rows of label k
        ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr[rows], Ytr[rows, k])
        ours_ap = average_precision(scores[:, k], Yte[:, k])
        ref_ap = average_precision(ref.decision_function(Xte), Yte[:, k])
        assert abs(ours_ap - ref_ap) <= 0.005
        np.testing.assert_allclose(probe.coef_[k], ref.coef_[0], atol=0.02 * np.abs(ref.coef_).max())
    assert set(np.unique(probe.predict(Xte))) <= {-1, 1}
    mean_ap = np.mean([average_precision(scores[:, k], Yte[:, k]) for k in range(3)])
    assert probe.score(Xte, Yte) == pytest.approx(mean_ap)


def test_balanced_class_weight_matches_binary_linearsvc_per_class(digits):
    Xtr, ytr, _, _, _, _ = digits
    C = 0.3
    probe = LinearProbe(Cs=[C], class_weight="balanced", device="cpu").fit(Xtr, ytr)
    for k in (0, 5):
        ref = LinearSVC(C=C, class_weight="balanced", tol=1e-6, max_iter=50000).fit(Xtr, np.where(ytr == k, 1, -1))
        np.testing.assert_allclose(probe.coef_[k], ref.coef_[0], atol=0.02 * np.abs(ref.coef_).max())
        assert probe.intercept_[k] == pytest.approx(ref.intercept_[0], abs=0.02)


def test_validation_selection_picks_the_same_C_as_an_exhaustive_sklearn_loop(digits):
    Xtr, ytr, Xva, yva, _, _ = digits
    Cs = [1e-4, 1e-2, 1.0]
    probe = fit_with_val(LinearProbe(Cs=Cs, device="cpu"), Xtr, ytr, Xva, yva)
    accuracies = [LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr, ytr).score(Xva, yva) for C in Cs]
    assert accuracies[0] < max(accuracies) - 0.05  # a clear case: the smallest C underfits
    assert probe.C_ == Cs[int(np.argmax(accuracies))]
    np.testing.assert_allclose(probe.cv_scores_, accuracies, atol=0.005)
    assert probe.selection_ == "val"
    # The final model is refit on train + val with the chosen C.
    refit = LinearProbe(Cs=[probe.C_], device="cpu").fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    np.testing.assert_allclose(probe.coef_, refit.coef_, atol=1e-3 * np.abs(refit.coef_).max())


def test_multilabel_validation_selection_matches_sklearn_loop(digits):
    Xtr, ytr, Xva, yva, _, _ = digits
    rng = np.random.default_rng(4)
    Ytr, Yva = multilabel_from_digits(ytr, rng), multilabel_from_digits(yva, rng)
    Cs = [1e-4, 1e-2, 1.0]
    probe = fit_with_val(LinearProbe(Cs=Cs, multilabel=True, device="cpu"), Xtr, Ytr, Xva, Yva)
    mean_aps = []
    for C in Cs:
        aps = []
        for k in range(Ytr.shape[1]):
            rows = Ytr[:, k] != 0
            ref = LinearSVC(C=C, tol=1e-6, max_iter=50000).fit(Xtr[rows], Ytr[rows, k])
            aps.append(average_precision(ref.decision_function(Xva), Yva[:, k]))
        mean_aps.append(np.mean(aps))
    assert probe.C_ == Cs[int(np.argmax(mean_aps))]
    np.testing.assert_allclose(probe.cv_scores_, mean_aps, atol=0.005)


def test_kfold_selection_and_custom_scoring(digits):
    Xtr, ytr, _, _, _, _ = digits
    Cs = [1e-4, 1e-2, 1.0]
    probe = LinearProbe(Cs=Cs, cv=3, device="cpu").fit(Xtr, ytr)
    assert probe.selection_ == "3-fold" and probe.C_ != 1e-4 and len(probe.cv_scores_) == 3
    seen = []

    def smallest_scores(y_true, scores):  # prefers the most regularised model
        seen.append((len(y_true), scores.shape))
        return -float(np.abs(scores).mean())

    custom = LinearProbe(Cs=Cs, cv=3, scoring=smallest_scores, device="cpu").fit(Xtr, ytr)
    assert custom.C_ == 1e-4
    assert len(seen) == 9 and all(shape == (n, 10) for n, shape in seen)


def test_two_fits_are_identical(relu_digits):
    """Bitwise identical at a fixed thread count (the default measures idle cores per fit)."""
    Xtr, ytr, Xva, yva, _, _ = relu_digits
    a = LinearProbe(Cs=[0.1, 1.0], device="cpu", seed=5, n_threads=1).fit(Xtr, ytr)
    b = LinearProbe(Cs=[0.1, 1.0], device="cpu", seed=5, n_threads=1).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.C_ == b.C_


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(digits):
    Xtr, ytr, Xva, yva, Xte, yte = digits
    probe = LinearProbe(Cs=[1.0], device="cpu")
    with pytest.raises(TransferlabError, match="labels for"):
        probe.fit(Xtr, ytr[:-1])
    bad = Xtr.copy()
    bad[7, 3] = np.nan
    with pytest.raises(TransferlabError, match="non-finite.*row 7, column 3"):
        probe.fit(bad, ytr)
    bad[7, 3] = np.inf
    with pytest.raises(TransferlabError, match="non-finite"):
        probe.fit(bad, ytr)
    with pytest.raises(TransferlabError, match="single class"):
        probe.fit(Xtr, np.zeros(len(Xtr), dtype=int))
    for Cs in ([1.0, 0.0], [-1.0], [], [np.inf]):
        with pytest.raises(TransferlabError, match="C"):
            LinearProbe(Cs=Cs).fit(Xtr, ytr)
    with pytest.raises(TransferlabError, match="loss"):
        LinearProbe(loss="hinge").fit(Xtr, ytr)
    with pytest.raises(TransferlabError, match="call fit"):
        LinearProbe().predict(Xte)
    with pytest.raises(TransferlabError, match="X_val and y_val"):
        stack_validation(Xtr, ytr, Xva, None)
    with pytest.raises(TransferlabError, match="features"):
        stack_validation(Xtr, ytr, Xva[:, :10], yva)
    with pytest.raises(TransferlabError, match="n_threads"):
        LinearProbe(n_threads=0).fit(Xtr, ytr)
    with pytest.raises(TransferlabError, match="class_weight"):
        LinearProbe(class_weight="auto").fit(Xtr, ytr)


def test_classes_missing_from_training_are_reported(digits):
    Xtr, ytr, Xva, yva, Xte, yte = digits
    keep = ytr != 9
    with pytest.raises(TransferlabError, match=r"\[9\].*validation but not in training"):
        fit_with_val(LinearProbe(Cs=[0.1, 1.0], device="cpu"), Xtr[keep], ytr[keep], Xva, yva)
    probe = LinearProbe(Cs=[1.0], device="cpu").fit(Xtr[keep], ytr[keep])
    with pytest.raises(TransferlabError, match=r"\[9\] were not in the training labels"):
        probe.score(Xte, yte)


def test_multilabel_label_conventions_are_checked(digits):
    Xtr, ytr, _, _, _, _ = digits
    indicator = np.stack([ytr % 2 == 0, ytr < 5], 1).astype(np.int8)  # 0/1, not 1/-1/0
    with pytest.raises(TransferlabError, match="no -1"):
        LinearProbe(Cs=[1.0], multilabel=True).fit(Xtr, indicator)
    with pytest.raises(TransferlabError, match="1, -1 or 0"):
        LinearProbe(Cs=[1.0], multilabel=True).fit(Xtr, indicator * 2)
    Y = np.stack([np.where(ytr % 2 == 0, 1, -1), -np.ones_like(ytr)], 1)
    with pytest.warns(UserWarning, match="label column 1 has 0 positive"):
        LinearProbe(Cs=[1.0], multilabel=True, device="cpu").fit(Xtr, Y)
    with pytest.raises(TransferlabError, match="1-D"):
        LinearProbe(Cs=[1.0]).fit(Xtr, Y)


def test_no_convergence_warning_on_a_normal_fit(digits):
    Xtr, ytr, _, _, _, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(Cs=[0.01, 10.0], device="cpu").fit(Xtr, ytr)


def test_groups_keep_an_image_and_its_mirror_in_one_fold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.repeat([0, 1], 20)
    X2, y2 = np.concatenate([X, X + 0.01]), np.concatenate([y, y])  # 40 images, each twice
    groups = np.tile(np.arange(40), 2)
    probe = LinearProbe(Cs=[0.1, 1.0], cv=4, seed=0)
    folds = probe._folds(y2, 80, groups)
    assert np.array_equal(folds[:40], folds[40:])  # mirror pairs never split across folds
    assert sorted(np.bincount(folds)) == [20, 20, 20, 20]  # stratified per image, then doubled
    assert probe.fit(X2, y2, groups=groups).selection_ == "4-fold"
    with pytest.raises(TransferlabError, match="one id per training row"):
        LinearProbe(Cs=[0.1, 1.0]).fit(X2, y2, groups=groups[:10])


def test_read_only_features_fit_and_score_silently_with_numpys_scores(digits):
    """Memory-mapped caches are read-only: no torch warning, and torch's scores equal X w + b."""
    X, y, X_val, y_val, X_test, _ = digits
    X, X_test = X.copy(), X_test.copy()
    X.setflags(write=False)
    X_test.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = LinearProbe(Cs=[1.0], device="cpu").fit(X, y)
        scores = probe.decision_function(X_test)
    assert scores.dtype == np.float32 and scores.shape == (len(X_test), 10)
    expected = X_test.astype(np.float64) @ probe.coef_.T.astype(np.float64) + probe.intercept_
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_block_schedule_starts_diagonal_on_small_dims_and_switches_on_for_larger_C():
    """Small rotated dims begin the C path with the diagonal preconditioner (the 64 x 64 block
    costs ~12 CG steps at 193 dims); the first solve that needs more than 5 CG steps per Newton
    step without it switches the block on for its C and every larger one. Wide dims always
    build it (it costs under 2 CG steps there)."""
    import torch

    from transferlab.heads.probe_solver import BlockSchedule, Design

    rng = np.random.default_rng(0)
    narrow = Design(torch.from_numpy(rng.standard_normal((300, 192)).astype(np.float32)), 1.0, True)
    schedule = BlockSchedule(narrow)
    assert not schedule.wants(0.01) and not schedule.wants(100.0)
    schedule.record(0.2, newton_steps=5, cg_steps=19, used_block=False)  # 3.8 per step: keep diagonal
    assert not schedule.wants(1.0)
    schedule.record(1.0, newton_steps=6, cg_steps=41, used_block=False)  # 6.8 per step: switch on
    assert schedule.wants(1.0) and schedule.wants(4.6) and not schedule.wants(0.2)
    schedule.record(4.6, newton_steps=5, cg_steps=200, used_block=True)  # with the block: no change
    assert not schedule.wants(0.5)
    wide = Design(torch.from_numpy(rng.standard_normal((3000, 1500)).astype(np.float32)), 1.0, True)
    assert BlockSchedule(wide).wants(1e-4)


def test_heads_stopped_by_max_iter_are_counted_and_reported(digits):
    """Newton's step limit is the one exit that leaves heads unconverged: the probe warns how
    many, and with room to converge it does not warn."""
    import warnings

    Xtr, ytr, *_ = digits
    with pytest.warns(UserWarning, match=r"heads did not converge at C=100 within max_iter=1"):
        LinearProbe(Cs=[100.0], max_iter=1, device="cpu").fit(Xtr, ytr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        LinearProbe(Cs=[100.0], device="cpu").fit(Xtr, ytr)
