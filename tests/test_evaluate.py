"""transferlab.evaluate: protocol names to numbers, on hand-worked cases."""

from __future__ import annotations

import time

import numpy as np
import pytest

from transferlab import evaluate as E
from transferlab import metrics as M
from transferlab.data.base import Query
from transferlab.errors import TransferlabError


def q(positives, junk=(), **kw) -> Query:
    return Query(
        path="q.jpg",
        positives=np.asarray(positives, dtype=np.int64),
        junk=np.asarray(junk, dtype=np.int64),
        **kw,
    )


# ----------------------------------------------------------------------------- bookkeeping


def test_every_metric_has_a_protocol_a_range_and_a_kind():
    assert set(E.PROTOCOLS) == set(E.CLASSIFICATION_METRICS) | set(E.RETRIEVAL_METRICS)
    for name in E.PROTOCOLS:
        assert E.higher_is_better(name) is True
        low, high = E.metric_range(name)
        assert E.error_of(name, high) == 0.0 and E.error_of(name, low) == 1.0
    assert E.metric_kind("ukb_score") == "retrieval"
    assert E.metric_kind("voc07_map") == "classification"


def test_error_of():
    assert E.error_of("voc07_map", 0.75) == pytest.approx(0.25)
    assert E.error_of("ukb_score", 3.0) == pytest.approx(0.25)  # (4 - 3) / 4


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(TransferlabError, match="unknown metric 'top5'.*voc07_map"):
        E.metric_range("top5")
    with pytest.raises(TransferlabError, match="retrieval metric"):
        E.evaluate_classification("oxford_map", np.zeros(2, int), np.zeros((2, 2)))
    with pytest.raises(TransferlabError, match="classification metric"):
        E.evaluate_retrieval("map", np.zeros((1, 2), int), [q([0])], 2)


# -------------------------------------------------------------------------- classification


def test_voc07_map_multilabel_hand_case():
    # class 0 scores .9 .8 .7 .6 .5 with labels 1 -1 1 0 -1: 11-point AP 28/33 (see
    #   test_metrics), plain AP (1 + 2/3)/2 = 5/6
    # class 1 labels -1 1 -1 -1 1, scores .1 .9 .2 .3 .8: positives ranked 1st and 2nd -> 1, 1
    labels = np.array([[1, -1], [-1, 1], [1, -1], [0, -1], [-1, 1]], dtype=np.int8)
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2], [0.6, 0.3], [0.5, 0.8]])
    out = E.evaluate_classification("voc07_map", labels, scores)
    assert list(out) == ["voc07_map", "map", "per_class"]
    assert out["voc07_map"] == pytest.approx((28 / 33 + 1) / 2)
    assert out["map"] == pytest.approx((5 / 6 + 1) / 2)
    assert out["per_class"] == pytest.approx([28 / 33, 1.0])
    out = E.evaluate_classification("map", labels, scores)
    assert list(out)[0] == "map" and out["per_class"] == pytest.approx([5 / 6, 1.0])


def test_map_on_single_label_uses_one_vs_rest():
    # 3 images, classes 0 1 0. class 0 column .9 .1 .2 -> ranked + (img0), + (img2), - : AP 1
    # class 1 column .3 .2 .8 -> ranked img2(-) img0(-) img1(+): AP 1/3
    labels = np.array([0, 1, 0])
    scores = np.array([[0.9, 0.3], [0.1, 0.2], [0.2, 0.8]])
    out = E.evaluate_classification("map", labels, scores)
    assert out["map"] == pytest.approx((1 + 1 / 3) / 2)


def test_mean_class_accuracy_from_argmax():
    # argmax rows -> 0 0 1 1 2 0 ; true 0 0 0 1 2 2 -> per class 2/3, 1, 1/2 -> 13/18; acc 4/6
    labels = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 0])
    scores = np.eye(4)[pred] * 2.0 - 1.0  # 4 columns: class 3 never occurs in labels
    out = E.evaluate_classification("mean_class_accuracy", labels, scores)
    assert list(out) == ["mean_class_accuracy", "accuracy", "per_class"]
    assert out["mean_class_accuracy"] == pytest.approx(13 / 18)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["per_class"][:3] == pytest.approx([2 / 3, 1.0, 0.5]) and np.isnan(out["per_class"][3])
    out = E.evaluate_classification("accuracy", labels, scores)
    assert list(out)[0] == "accuracy" and out["accuracy"] == pytest.approx(4 / 6)


def test_mean_auc_attributes():
    # attribute 0: .9 .8 .8 .3 with 1 -1 1 -1 -> 0.875 (tie counts 1/2); attribute 1 perfect
    labels = np.array([[1, 1], [-1, 1], [1, -1], [-1, 0]], dtype=np.int8)
    scores = np.array([[0.9, 0.7], [0.8, 0.6], [0.8, 0.1], [0.3, 5.0]])
    out = E.evaluate_classification("mean_auc", labels, scores)
    assert list(out) == ["mean_auc", "map", "per_class"]
    assert out["per_class"] == pytest.approx([0.875, 1.0])
    assert out["mean_auc"] == pytest.approx(0.9375)


def test_classification_bad_input():
    with pytest.raises(TransferlabError, match="3 rows but labels has 2"):
        E.evaluate_classification("accuracy", np.array([0, 1]), np.zeros((3, 2)))
    with pytest.raises(TransferlabError, match="NaN"):
        E.evaluate_classification("accuracy", np.array([0, 1]), np.array([[0.0, np.nan], [1, 0]]))
    with pytest.raises(TransferlabError, match="label 5 outside the 2 score columns"):
        E.evaluate_classification("accuracy", np.array([0, 5]), np.zeros((2, 2)))
    with pytest.raises(TransferlabError, match="does not match 3 score columns"):
        E.evaluate_classification("voc07_map", np.ones((2, 2), np.int8), np.zeros((2, 3)))
    with pytest.raises(TransferlabError, match="voc07_map: column 0: .*entry 1 is 2"):
        E.evaluate_classification("voc07_map", np.array([[1], [2]], np.int8), np.zeros((2, 1)))


# ------------------------------------------------------------------------------- retrieval


def test_oxford_map_hand_case_with_junk():
    # query 0: ranking 5 3 9 1 7 2 0, positives (good+ok) {3, 1, 0}, junk {9, 7}
    #   junk removed -> 5 3 1 2 0, positives at 1 2 4 -> 1/12 + 7/36 + 11/60 = 83/180
    # query 1: ranking 0..9, positive {0}, no junk -> 1
    # query 2: no positives -> left out (nan) with a warning
    ranking = np.array([[5, 3, 9, 1, 7, 2, 0, 4, 6, 8], list(range(10)), list(range(10))])
    queries = [q([3, 1, 0], junk=[9, 7]), q([0]), q([])]
    with pytest.warns(M.MetricWarning, match="1 of 3 queries"):
        out = E.evaluate_retrieval("oxford_map", ranking, queries, db_size=10)
    assert out["oxford_map"] == pytest.approx((83 / 180 + 1) / 2)
    assert out["per_query"][:2] == pytest.approx([83 / 180, 1.0]) and np.isnan(out["per_query"][2])


def test_oxford_map_top_k_ranking():
    # top-3 list 5 3 9 of a 10-image db; junk 9; positives {3, 1, 0}: only 3 at rank 1
    # (0 + 1/2) * (1/3) / 2 = 1/12 ; 1 and 0 never retrieved
    out = E.evaluate_retrieval("oxford_map", np.array([[5, 3, 9]]), [q([3, 1, 0], junk=[9])], 10)
    assert out["oxford_map"] == pytest.approx(1 / 12)


def test_revisited_map_transposes_to_the_kit_layout():
    # same case as test_metrics.test_revisited_map_hand_case, given as the head's (n_q, n_db)
    ranking = np.array([[2, 0, 4, 1, 5, 3], [0, 1, 2, 3, 4, 5]])
    queries = [
        q([0, 3, 1], junk=[4], easy=np.array([0, 3]), hard=np.array([1])),
        q([0], easy=np.array([0]), hard=np.zeros(0, np.int64)),
    ]
    with pytest.warns(M.MetricWarning):
        out = E.evaluate_retrieval("revisited_map", ranking, queries, db_size=6)
    assert out["easy"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["medium"] == pytest.approx((83 / 180 + 1) / 2)
    assert out["hard"] == pytest.approx(1 / 4)
    assert out["revisited_map"] == out["medium"]
    with pytest.raises(TransferlabError, match="query 0 .* no easy/hard"):
        E.evaluate_retrieval("revisited_map", ranking, [q([0]), q([1])], db_size=6)


def test_holidays_map_uses_db_index():
    # see test_metrics.test_holidays_map_drops_the_query_itself: (1/3 + 1) / 2
    ranking = np.array([[0, 3, 1, 4, 2], [4, 3, 0, 1, 2]])
    queries = [q([1, 2], db_index=0), q([4], db_index=3)]
    out = E.evaluate_retrieval("holidays_map", ranking, queries, db_size=5)
    assert out["holidays_map"] == pytest.approx(2 / 3)
    assert out["per_query"] == pytest.approx([1 / 3, 1.0])


def test_ukb_groups_and_score():
    # 8 images, groups {0..3} and {4..7}; queries are images 0 and 4 with their 3 partners
    queries = [q([1, 2, 3], db_index=0), q([5, 6, 7], db_index=4), q([0, 2, 3], db_index=1)]
    groups, query_groups = E.ukb_groups(queries, 9)  # image 8 belongs to no query's group
    assert groups[:8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and groups[8] not in (0, 1)
    assert query_groups.tolist() == [0, 1, 0]
    # query 0 top 4: 0 1 8 2 -> 3 ; query 4: 4 5 6 7 -> 4 ; query 1: 1 4 5 6 -> 1 ; mean 8/3
    ranking = np.array([[0, 1, 8, 2, 3], [4, 5, 6, 7, 0], [1, 4, 5, 6, 0]])
    out = E.evaluate_retrieval("ukb_score", ranking, queries, db_size=9)
    assert out["ukb_score"] == pytest.approx(8 / 3)
    assert out["per_query"] == [3.0, 4.0, 1.0]
    bad = [q([1, 2, 3], db_index=0), q([3, 4, 5], db_index=6)]
    with pytest.raises(TransferlabError, match="partially overlaps"):
        E.ukb_groups(bad, 9)


def test_retrieval_bad_input():
    queries = [q([1])]
    with pytest.raises(TransferlabError, match=r"n_queries=1"):
        E.evaluate_retrieval("oxford_map", np.zeros((2, 3), int), queries, 3)
    with pytest.raises(TransferlabError, match="index 7, outside the database of 3"):
        E.evaluate_retrieval("oxford_map", np.array([[0, 7, 1]]), queries, 3)
    with pytest.raises(TransferlabError, match="integer"):
        E.evaluate_retrieval("oxford_map", np.array([[0.0, 1.0]]), queries, 3)
    with pytest.raises(TransferlabError, match="positives holds index outside"):
        E.evaluate_retrieval("oxford_map", np.array([[0, 1, 2]]), [q([5])], 3)
    with pytest.raises(TransferlabError, match="twice"):
        E.evaluate_retrieval("oxford_map", np.array([[0, 1, 1]]), queries, 3)


def test_retrieval_scale_70_queries_100k_db():
    # The size of Oxford105k: a full ranking of 100k for 70 queries. Correctness at scale:
    # a ranking that puts each query's positives first must give mAP 1 exactly.
    rng = np.random.default_rng(0)
    n_q, n_db = 70, 100_000
    ranking = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    # positives = the first 40 of each ranking (in shuffled order), junk from the tail
    queries = [q(rng.permutation(row[:40]), junk=row[-5:]) for row in ranking]
    start = time.perf_counter()
    out = E.evaluate_retrieval("oxford_map", ranking, queries, n_db)
    elapsed = time.perf_counter() - start
    assert out["oxford_map"] == pytest.approx(1.0)
    assert elapsed < 5.0  # ~0.1 s measured on one core; generous for a shared machine
