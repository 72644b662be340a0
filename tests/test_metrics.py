"""transferlab.metrics on hand-worked cases (arithmetic in the comments), against sklearn
where sklearn defines the same number, and against straight transcriptions of the kits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from transferlab import metrics as M
from transferlab.errors import TransferlabError

# ------------------------------------------------------------------ reference transcriptions


def matlab_colon(a: float, d: float, b: float) -> list[float]:
    """MATLAB a:d:b (MathWorks solution 1-4FLI96): first half a + k*d, second half b - k*d."""
    n = int(round((b - a) / d))
    v = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        v[k] = a + k * d
        v[n - k] = b - k * d
    if n % 2 == 0:
        v[n // 2] = (a + b) / 2
    return v


def voc07_reference(scores, labels, thresholds):
    """Line-by-line VOCevalcls.m (VOC2007): difficult (0) counts as neither tp nor fp."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    gt = np.asarray(labels)[order]
    tp = np.cumsum(gt > 0).astype(float)
    fp = np.cumsum(gt < 0).astype(float)
    rec = tp / np.sum(gt > 0)
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)
    ap = 0.0
    for t in thresholds:
        sel = prec[rec >= t]
        sel = sel[~np.isnan(sel)]  # MATLAB max ignores NaN
        p = sel.max() if sel.size else 0.0
        ap = ap + p / 11
    return ap


def oxford_cpp_reference(ranking, positives, junk):
    """compute_ap.cpp of the Oxford buildings kit: skip junk, trapezoid between successive
    (recall, precision) points starting from (0, 1)."""
    pos, amb = set(positives), set(junk)
    old_recall, old_precision, ap, hits, j = 0.0, 1.0, 0.0, 0, 0
    for item in ranking:
        if item in amb:
            continue
        if item in pos:
            hits += 1
        recall = hits / len(pos)
        precision = hits / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


# ------------------------------------------------------------------------------- voc07_ap


def test_voc07_thresholds_are_matlab_colon():
    assert M.VOC07_RECALL_THRESHOLDS == tuple(matlab_colon(0.0, 0.1, 1.0))
    # the published quirk: 3*0.1 > 0.3, but 1 - 4*0.1 == 0.6 in MATLAB (not in np.arange)
    assert M.VOC07_RECALL_THRESHOLDS[3] > 0.3
    assert M.VOC07_RECALL_THRESHOLDS[6] == 0.6 and M.VOC07_RECALL_THRESHOLDS[7] == 0.7
    assert np.arange(0.0, 1.1, 0.1)[6] > 0.6


def test_voc07_ap_hand_case_with_difficult():
    # ranked labels + - + (0 dropped) - : npos = 2
    # tp 1 1 2 2, fp 0 1 1 2 -> rec .5 .5 1 1, prec 1 .5 2/3 .5
    # t = 0..0.5 (6 thresholds): max prec = 1; t = 0.6..1 (5): max(2/3, .5) = 2/3
    # AP = (6 + 5 * 2/3) / 11 = 28/33
    ap = M.voc07_ap(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, -1, 1, 0, -1]))
    assert ap == pytest.approx(28 / 33, abs=1e-15)


def test_voc07_ap_recall_exactly_0_6_follows_matlab_not_numpy_port():
    # ranked + + + - - + + (npos 5): rec .2 .4 .6 .6 .6 .8 1, prec 1 1 1 .75 .6 4/6 5/7
    # MATLAB t = 0..0.6 (7 thresholds, 0.6 == 3/5): max prec = 1
    #        t = 0.7..1 (4): max(4/6, 5/7) = 5/7       -> AP = (7 + 20/7) / 11 = 69/77
    # np.arange's t[6] = 0.6000000000000001 > 3/5 would give (6 + 25/7) / 11 = 67/77
    labels = np.array([1, 1, 1, -1, -1, 1, 1])
    scores = -np.arange(7.0)
    assert M.voc07_ap(scores, labels) == pytest.approx(69 / 77, abs=1e-15)
    assert voc07_reference(scores, labels, np.arange(0.0, 1.1, 0.1)) == pytest.approx(67 / 77)


def test_voc07_ap_recall_exactly_0_3_is_below_threshold_as_in_matlab():
    # npos 10: + + + then 7 negatives then 7 positives
    # rec 0.3 (prec 1) is below MATLAB's t = 0.30000000000000004; for t >= 0.3 the best
    # precision is k/(7+k) at k = 10: 10/17. AP = (3 * 1 + 8 * 10/17) / 11 = 131/187
    labels = np.array([1] * 3 + [-1] * 7 + [1] * 7)
    scores = -np.arange(17.0)
    assert M.voc07_ap(scores, labels) == pytest.approx(131 / 187, abs=1e-15)


def test_voc07_ap_matches_devkit_transcription_and_numpy_port_off_boundaries():
    rng = np.random.default_rng(0)
    matlab_t = matlab_colon(0.0, 0.1, 1.0)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(3, 60))
        labels = rng.choice([1, -1, 0], size=n, p=[0.3, 0.6, 0.1])
        scores = np.round(rng.normal(size=n), 1)  # ties on purpose
        npos = int((labels > 0).sum())
        if npos == 0:
            assert np.isnan(M.voc07_ap(scores, labels))
            continue
        ours = M.voc07_ap(scores, labels)
        assert ours == voc07_reference(scores, labels, matlab_t)  # bit-identical
        if npos % 5:  # no recall can equal 0.3, 0.6 or 0.7: the numpy port agrees
            assert ours == voc07_reference(scores, labels, np.arange(0.0, 1.1, 0.1))
        checked += 1
    assert checked > 200


def test_voc07_ap_ties_keep_input_order():
    # tied scores: stable sort keeps input order. [-1, 1]: ranked - +, rec 0 1, prec 0 .5
    # every threshold sees max prec .5 -> AP .5 ; [1, -1]: ranked + - -> AP 1
    assert M.voc07_ap(np.array([0.5, 0.5]), np.array([-1, 1])) == pytest.approx(0.5)
    assert M.voc07_ap(np.array([0.5, 0.5]), np.array([1, -1])) == pytest.approx(1.0)


def test_difficult_removed_equals_dropping_them():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=40)
    labels = rng.choice([1, -1, 0], size=40)
    keep = labels != 0
    for f in (M.voc07_ap, M.average_precision):
        assert f(scores, labels) == f(scores[keep], labels[keep])


# ------------------------------------------------------------------------ average_precision


def test_average_precision_hand_case():
    # drop the 0 at .5 -> ranked + - + - + ; positives at ranks 1, 3, 5
    # precisions 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45
    ap = M.average_precision(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([1, -1, 1, -1, 0, 1]))
    assert ap == pytest.approx(34 / 45, abs=1e-15)


def test_average_precision_equals_sklearn_without_ties():
    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(2, 50))
        scores = rng.normal(size=n)
        labels = rng.choice([1, -1], size=n)
        if not (labels > 0).any():
            continue
        assert M.average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels > 0, scores), abs=1e-12
        )


def test_average_precision_ties_and_empty():
    # tied pair, negative listed first: ranked - +, the positive at rank 2 -> 1/2
    assert M.average_precision(np.array([1.0, 1.0]), np.array([-1, 1])) == pytest.approx(0.5)
    assert np.isnan(M.average_precision(np.array([1.0, 2.0]), np.array([-1, 0])))


def test_mean_average_precision_skips_columns_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.1, 0.3, 0.3]])
    labels = np.array([[1, -1, -1], [-1, 1, -1], [1, -1, 0]])
    # col 0: ranked + - + -> (1 + 2/3)/2 = 5/6 ; col 1: + first -> 1 ; col 2: no positive
    per: list[float] = []
    with pytest.warns(M.MetricWarning, match="1 of 3 columns"):
        value = M.mean_average_precision(scores, labels, per_class=per)
    assert value == pytest.approx((5 / 6 + 1) / 2)
    assert per[:2] == pytest.approx([5 / 6, 1.0]) and np.isnan(per[2])
    # the ap argument selects the 11-point variant: col 0 voc07 = (6*1 + 5*(2/3))/11 = 28/33
    with pytest.warns(M.MetricWarning):
        assert M.mean_average_precision(scores, labels, ap=M.voc07_ap) == pytest.approx((28 / 33 + 1) / 2)


# ------------------------------------------------------------------------------ accuracies


def test_mean_class_accuracy_and_accuracy_hand_case():
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 0])
    # class 0: 2/3, class 1: 1/1, class 2: 1/2 -> (2/3 + 1 + 1/2) / 3 = 13/18
    assert M.mean_class_accuracy(y_true, y_pred) == pytest.approx(13 / 18)
    # 4 of 6 correct
    assert M.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # a class only predicted (3) does not enter the mean
    assert M.mean_class_accuracy(np.array([0, 1]), np.array([3, 1])) == pytest.approx(0.5)


def test_accuracy_bad_input():
    with pytest.raises(M.MetricInputError, match="3 entries but y_pred has 2"):
        M.accuracy(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        M.mean_class_accuracy(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(TransferlabError, match="NaN"):
        M.accuracy(np.array([0.0, np.nan]), np.array([0, 1]))


# ------------------------------------------------------------------------------------- AUC


def test_roc_auc_hand_case_with_tie():
    # pos .9 beats both negatives (2); pos .8 ties neg .8 (1/2) and beats .3 (1) -> 3.5/4
    assert M.roc_auc(np.array([0.9, 0.8, 0.8, 0.3]), np.array([1, -1, 1, -1])) == pytest.approx(0.875)


def test_mean_auc_equals_sklearn_per_column_and_ignores_zero():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(60, 5)), 1)
    labels = rng.choice([1, -1, 0], size=(60, 5), p=[0.3, 0.6, 0.1]).astype(np.int8)
    per: list[float] = []
    value = M.mean_auc(scores, labels, per_class=per)
    expected = []
    for k in range(5):
        keep = labels[:, k] != 0
        expected.append(roc_auc_score(labels[keep, k] > 0, scores[keep, k]))
    assert per == pytest.approx(expected, abs=1e-12)
    assert value == pytest.approx(np.mean(expected), abs=1e-12)


def test_mean_auc_skips_single_class_columns():
    scores = np.array([[0.1, 0.5], [0.9, 0.2]])
    labels = np.array([[-1, 1], [1, 1]])  # column 1 has no negative
    with pytest.warns(M.MetricWarning):
        assert M.mean_auc(scores, labels) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- retrieval_ap


def test_retrieval_ap_hand_case_with_junk():
    # ranking 5 3 9 1 7 2 0, positives {3, 1, 0}, junk {9, 7}
    # without junk: 5 3 1 2 0 -> positives at 0-based ranks 1, 2, 4; recall step 1/3
    # j=0 r=1: left 0/1 = 0,   right 1/2 -> (0 + 1/2)   / 2 / 3 = 1/12
    # j=1 r=2: left 1/2,       right 2/3 -> (7/6)       / 6     = 7/36
    # j=2 r=4: left 2/4,       right 3/5 -> (11/10)     / 6     = 11/60
    # AP = 15/180 + 35/180 + 33/180 = 83/180
    ranking = np.array([5, 3, 9, 1, 7, 2, 0])
    assert M.retrieval_ap(ranking, [3, 1, 0], [9, 7]) == pytest.approx(83 / 180, abs=1e-15)
    assert M.retrieval_ap(ranking, [3, 1, 0], [9, 7]) == pytest.approx(
        oxford_cpp_reference(ranking, [3, 1, 0], [9, 7]), abs=1e-12
    )


def test_retrieval_ap_edge_cases():
    # positive first and alone: one trapezoid (1 + 1)/2 * 1 = 1
    assert M.retrieval_ap(np.array([4, 0, 1]), [4]) == pytest.approx(1.0)
    # truncated list: 7 never retrieved still counts in the recall step (1/2)
    # 2 at rank 1: (0 + 1/2) * (1/2) / 2 = 1/8
    assert M.retrieval_ap(np.array([4, 2]), [2, 7]) == pytest.approx(1 / 8)
    # no positives -> nan (left out of means)
    assert np.isnan(M.retrieval_ap(np.array([0, 1, 2]), []))
    # all positives junk-free at the top -> 1
    assert M.retrieval_ap(np.array([9, 1, 2, 3]), [1, 2], junk=[9]) == pytest.approx(1.0)


def test_retrieval_ap_matches_oxford_cpp_on_random_cases():
    rng = np.random.default_rng(4)
    for _ in range(100):
        n = int(rng.integers(5, 80))
        ranking = rng.permutation(n)
        picked = rng.permutation(n)
        n_pos = int(rng.integers(1, max(2, n // 3)))
        n_junk = int(rng.integers(0, n // 4 + 1))
        pos, junk = picked[:n_pos], picked[n_pos : n_pos + n_junk]
        assert M.retrieval_ap(ranking, pos, junk) == pytest.approx(
            oxford_cpp_reference(ranking, pos, junk), abs=1e-12
        )


def test_retrieval_ap_bad_input():
    with pytest.raises(M.MetricInputError, match="twice"):
        M.retrieval_ap(np.array([0, 1, 1]), [1])
    with pytest.raises(M.MetricInputError, match="1-D"):
        M.retrieval_ap(np.array([[0, 1]]), [1])
    with pytest.raises(M.MetricInputError, match="integer"):
        M.retrieval_ap(np.array([0.0, 1.0]), [1])
    with pytest.raises(M.MetricInputError, match="more than once"):
        M.retrieval_ap(np.array([0, 1]), [1, 1])
    with pytest.warns(M.MetricWarning, match="both positive and junk"):
        M.retrieval_ap(np.array([0, 1, 2]), [1, 2], junk=[1])


def test_mean_retrieval_ap_leaves_out_empty_queries():
    ranking = np.array([[0, 1, 2], [2, 1, 0], [0, 1, 2]])
    # q0: positive 0 at rank 0 -> 1; q1: positive 0 at rank 2 -> (0/2 + 1/3)/2 = 1/6; q2 empty
    with pytest.warns(M.MetricWarning, match="1 of 3 queries"):
        value = M.mean_retrieval_ap(ranking, [[0], [0], []])
    assert value == pytest.approx((1 + 1 / 6) / 2)


# ---------------------------------------------------------------------------- revisited_map


def test_revisited_map_hand_case():
    # db of 6; query 0 ranks 2 0 4 1 5 3, easy {0, 3}, hard {1}, junk {4}
    #  Easy   pos {0,3}, junk {4,1}: 2 0 5 3 -> ranks 1, 3: (0+1/2)/4 + (1/3+2/4)/4 = 1/8+5/24 = 1/3
    #  Medium pos {0,3,1}, junk {4}: 2 0 1 5 3 -> ranks 1, 2, 4: 83/180 (as the Oxford case)
    #  Hard   pos {1}, junk {4,0,3}: 2 1 5 -> rank 1: (0 + 1/2)/2 = 1/4
    # query 1 ranks 0..5, easy {0}, hard {}, no junk key: Easy 1, Medium 1, Hard: no positive
    ranks = np.array([[2, 0, 4, 1, 5, 3], [0, 1, 2, 3, 4, 5]]).T  # kit layout (n_db, n_q)
    gnd = [
        {"easy": np.array([0, 3]), "hard": np.array([1]), "junk": np.array([4])},
        {"easy": np.array([0]), "hard": np.array([], dtype=int)},
    ]
    with pytest.warns(M.MetricWarning, match="hard"):
        result = M.revisited_map(ranks, gnd)
    assert result["easy"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["medium"] == pytest.approx((83 / 180 + 1) / 2)
    assert result["hard"] == pytest.approx(1 / 4)  # query 1 excluded, as in the kit
    aps = M.revisited_aps(ranks, gnd)
    assert aps["medium"][0] == pytest.approx(83 / 180) and np.isnan(aps["hard"][1])


def test_revisited_map_bad_input():
    ranks = np.arange(4)[:, None]
    with pytest.raises(M.MetricInputError, match="1 query columns but gnd has 2"):
        M.revisited_map(ranks, [{"easy": [0], "hard": [1]}] * 2)
    with pytest.raises(M.MetricInputError, match=r"gnd\[0\] has no 'hard'"):
        M.revisited_map(ranks, [{"easy": [0]}])


# ----------------------------------------------------------------------- holidays and ukb


def test_holidays_map_drops_the_query_itself():
    # db 0..4; query A is image 0 with group {1, 2}; query B is image 3 with group {4}
    # A ranks 0 3 1 4 2 -> drop 0 -> 3 1 4 2: ranks 1, 3, step 1/2: 1/8 + 5/24 = 1/3
    # B ranks 4 3 0 1 2 -> drop 3 -> 4 0 1 2: rank 0 -> 1 ;  mAP = (1/3 + 1)/2 = 2/3
    ranking = np.array([[0, 3, 1, 4, 2], [4, 3, 0, 1, 2]])
    assert M.holidays_map(ranking, [[1, 2], [4]], [0, 3]) == pytest.approx(2 / 3)
    # if the query were kept: A's positives at ranks 2, 4: (0 + 1/3)/4 + (1/4 + 2/5)/4 = 59/240
    assert M.holidays_map(ranking, [[1, 2], [4]]) == pytest.approx((59 / 240 + 1) / 2)


def test_ukb_score_hand_case():
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # query 0 top 4: 0 1 4 2 -> 3 of group 0 ; query 4 top 4: 4 5 6 7 -> 4 ; mean 3.5
    ranking = np.array([[0, 1, 4, 2, 3, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3]])
    assert M.ukb_score(ranking, groups, query_groups=np.array([0, 1])) == pytest.approx(3.5)
    # default: row q is database image q (both rows are group 0 then) -> (3 + 0)/2
    assert M.ukb_score(ranking, groups) == pytest.approx(1.5)
    with pytest.raises(M.MetricInputError, match="top 4"):
        M.ukb_score(ranking[:, :3], groups)
