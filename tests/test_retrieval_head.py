"""Retrieval head: exact ranking (ties, chunking, top-k), AQE / alpha-QE, DBA, spatial search.

Expected values in the hand-checked cases are worked out in the comments next to them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from transferlab.errors import TransferlabError
from transferlab.heads.retrieval import (
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
    expand_queries,
    l2_normalize,
    rank,
    rank_by_distance,
    retrieve,
    similarities,
    spatial_search_distances,
    spatial_search_rank,
    spatial_windows,
)

# d0..d5; d5 duplicates d0, d3 points the same way as d0 (cosine ties), d4 is the diagonal.
DB = np.array([[1, 0], [0, 1], [-1, 0], [2, 0], [1, 1], [1, 0]], dtype=np.float32)
Q = np.array([[1, 0], [0, 2]], dtype=np.float32)


# ----------------------------------------------------------------------------- ranking


def test_rank_cosine_by_hand_with_ties():
    # q0=(1,0): cos = 1, 0, -1, 1, 1/sqrt2, 1 -> the three 1s in index order: 0, 3, 5; then 4, 1, 2.
    # q1=(0,2): cos = 0, 1, 0, 0, 1/sqrt2, 0 -> 1, 4, then the four 0s in index order 0, 2, 3, 5.
    expected = [[0, 3, 5, 4, 1, 2], [1, 4, 0, 2, 3, 5]]
    out = rank(Q, DB, "cosine", device="cpu")
    assert out.dtype == np.int64
    assert out.tolist() == expected
    for chunk in (1, 2, 4):
        assert rank(Q, DB, "cosine", chunk_size=chunk, query_chunk_size=1, device="cpu").tolist() == expected


def test_rank_l2_by_hand_with_ties():
    # q0=(1,0): squared distances 0, 2, 4, 1, 1, 0 -> 0, 5 (tie at 0), 3, 4 (tie at 1), 1, 2.
    # q1=(0,2): 5, 1, 5, 8, 2, 5 -> 1, 4, then 0, 2, 5 (tie at 5), then 3.
    expected = [[0, 5, 3, 4, 1, 2], [1, 4, 0, 2, 5, 3]]
    assert rank(Q, DB, "l2", device="cpu").tolist() == expected
    sims = similarities(Q, DB, "l2", device="cpu")
    np.testing.assert_array_equal(sims, -np.array([[0, 2, 4, 1, 1, 0], [5, 1, 5, 8, 2, 5]]))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_top_k_by_hand_cuts_inside_ties(metric):
    full = rank(Q, DB, metric, device="cpu")
    for k in (1, 2, 3, 4, 6, 10):
        for chunk in (1, 2, 3, 100):
            out = rank(Q, DB, metric, top_k=k, chunk_size=chunk, device="cpu")
            assert out.tolist() == full[:, : min(k, 6)].tolist(), (k, chunk)
    # the l2 cut at k=3 falls between the tied d3 and d4: the lower index, d3, is kept.
    if metric == "l2":
        assert rank(Q, DB, metric, top_k=3, device="cpu")[0].tolist() == [0, 5, 3]


def _reference_ranking(q: np.ndarray, d: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores, sorted by (score descending, index ascending)."""
    q64, d64 = q.astype(np.float64), d.astype(np.float64)
    if metric == "cosine":
        # q.d / (|q| |d|): equal exact dots and norms give equal scores (true ties stay ties)
        norms = np.outer(np.linalg.norm(q64, axis=1), np.linalg.norm(d64, axis=1))
        scores = (q64 @ d64.T) / norms
    else:
        scores = -((q64[:, None, :] - d64[None, :, :]) ** 2).sum(-1)
    return np.argsort(-scores, axis=1, kind="stable")


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_chunked_equals_unchunked_and_reference(metric):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    d = rng.standard_normal((101, 16)).astype(np.float32)
    direct = rank(q, d, metric, device="cpu")
    np.testing.assert_array_equal(direct, _reference_ranking(q, d, metric))
    for chunk, q_chunk in ((7, 5), (13, 36), (100, 1), (101, 37), (1000, 1000)):
        np.testing.assert_array_equal(
            rank(q, d, metric, chunk_size=chunk, query_chunk_size=q_chunk, device="cpu"), direct
        )
        for k in (1, 6, 7, 50, 101):
            np.testing.assert_array_equal(
                rank(q, d, metric, chunk_size=chunk, query_chunk_size=q_chunk, top_k=k, device="cpu"),
                direct[:, :k],
            )


def test_many_exact_ties_all_chunkings_agree():
    # Integer data: every score is exact, so there are many true ties at every cut.
    rng = np.random.default_rng(1)
    d = rng.integers(-1, 2, size=(203, 5)).astype(np.float32)
    q_l2 = rng.integers(-1, 2, size=(19, 5)).astype(np.float32)
    # cosine queries with four entries of +-0.5: unit norm, so q.d is exact too
    q_cos = np.zeros((19, 6), dtype=np.float32)
    for row in q_cos:
        row[rng.choice(6, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    d_cos = rng.integers(-1, 2, size=(203, 6)).astype(np.float32)
    for metric, q, db in (("l2", q_l2, d), ("cosine", q_cos, d_cos)):
        direct = rank(q, db, metric, device="cpu")
        np.testing.assert_array_equal(direct, _reference_ranking(q, db, metric))
        sims = similarities(q, db, metric, device="cpu")
        # within each row, equal scores appear in increasing index order
        for row, order in zip(sims, direct, strict=True):
            s = row[order]
            assert np.all(np.diff(s) <= 0)
            same = np.diff(s) == 0
            assert np.all(np.diff(order)[same] > 0)
        assert (np.diff(np.sort(sims, axis=1), axis=1) == 0).sum() > 1000  # ties really occur
        for chunk in (3, 10, 64, 203):
            for k in (1, 3, 17, 60):
                np.testing.assert_array_equal(
                    rank(q, db, metric, chunk_size=chunk, top_k=k, query_chunk_size=7, device="cpu"),
                    direct[:, :k],
                )


def test_negative_zero_ties_with_positive_zero():
    # cos((1,0),(0,1)) = +0 and cos((1,0),(0,-1)) may compute as -0: they still tie by index.
    db = np.array([[0, -1], [0, 1], [1, 0]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    assert rank(q, db, device="cpu").tolist() == [[2, 0, 1]]
    assert rank(q, db, top_k=2, chunk_size=1, device="cpu").tolist() == [[2, 0]]


def test_zero_vector_has_cosine_zero():
    db = np.array([[0, 0], [-1, 0], [1, 0]], dtype=np.float32)
    assert rank(np.array([[1, 0]], np.float32), db, device="cpu").tolist() == [[2, 0, 1]]


def test_rank_rejects_bad_input():
    with pytest.raises(TransferlabError, match="dimensions"):
        rank(np.zeros((2, 3)), np.zeros((4, 2)))
    with pytest.raises(TransferlabError, match="non-finite"):
        rank(np.array([[np.nan, 1.0]]), np.zeros((4, 2)))
    with pytest.raises(TransferlabError, match="metric"):
        rank(Q, DB, "hamming")
    with pytest.raises(TransferlabError, match="top_k"):
        rank(Q, DB, top_k=0)
    with pytest.raises(TransferlabError, match="2-D"):
        rank(np.zeros(3), DB)
    with pytest.raises(TransferlabError, match="overflow"):
        rank(np.full((1, 2), 1e19, np.float32), DB, "l2")
    assert rank(np.zeros((0, 2)), DB).shape == (0, 6)
    assert rank(Q, np.zeros((0, 2)), top_k=5).shape == (2, 0)


def test_memory_bounded_top_k_on_8k_by_20k():
    # Run in a fresh process so its peak RSS is this search alone. The full float32 score
    # matrix would take 640 MiB (and a full int64 ranking 1.2 GiB); the blocked top-k must
    # stay far below (about 130 MiB measured, mostly allocator and BLAS workspace).
    code = textwrap.dedent(
        """
        import json, resource, time
        import numpy as np
        from transferlab.heads.retrieval import rank
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8000, 64), dtype=np.float32)
        y = rng.standard_normal((20000, 64), dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        out = rank(x, y, top_k=100, device="cpu")
        seconds = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = [0, 4321, 7999]
        ref = rank(x[rows], y, device="cpu")[:, :100]
        print(json.dumps({"shape": list(out.shape), "seconds": seconds,
                          "extra_mib": (after - before) / 1024,
                          "same": bool((out[rows] == ref).all())}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [8000, 100]
    assert result["same"]
    assert result["extra_mib"] < 400, result


# ----------------------------------------------------------------------------- query expansion

# Unit vectors: q=(1,0); d0=(.8,.6) cos .8; d1=(.6,-.8) cos .6; d2=(.28,.96) cos .28; d3=(0,-1) cos 0;
# d4=(-1,0) cos -1.
QE_DB = np.array([[0.8, 0.6], [0.6, -0.8], [0.28, 0.96], [0, -1], [-1, 0]], dtype=np.float32)
QE_Q = np.array([[1, 0]], dtype=np.float32)


def test_first_ranking_of_qe_example():
    assert rank(QE_Q, QE_DB, device="cpu").tolist() == [[0, 1, 2, 3, 4]]


def test_average_query_expansion_by_hand():
    first = rank(QE_Q, QE_DB, device="cpu")
    # k=1: q + d0 = (1.8, .6) -> /sqrt(3.6) = (.94868, .31623)
    # cos: d0 .75895+.18974=.94868, d1 .56921-.25298=.31623, d2 .26563+.30358=.56921, d3 -.31623,
    # d4 -.94868 -> d2 overtakes d1.
    expanded = expand_queries(QE_Q, QE_DB, first, 1)
    np.testing.assert_allclose(expanded, [[1.8 / math.sqrt(3.6), 0.6 / math.sqrt(3.6)]], rtol=1e-6)
    assert average_query_expansion(QE_Q, QE_DB, first, 1, device="cpu").tolist() == [[0, 2, 1, 3, 4]]
    # k=2: q + d0 + d1 = (2.4, -.2) -> /sqrt(5.8)
    np.testing.assert_allclose(
        expand_queries(QE_Q, QE_DB, first, 2), [[2.4 / math.sqrt(5.8), -0.2 / math.sqrt(5.8)]], rtol=1e-6
    )
    # k=0 leaves the (normalised) query alone
    assert average_query_expansion(QE_Q * 3, QE_DB, first, 0, device="cpu").tolist() == first.tolist()


def test_alpha_query_expansion_by_hand():
    first = rank(QE_Q, QE_DB, device="cpu")
    # alpha=3, k=2: weights 1 (query), .8^3=.512, .6^3=.216
    # q' = (1 + .4096 + .1296, .3072 - .1728) = (1.5392, .1344)
    expected = np.array([[1.5392, 0.1344]]) / math.hypot(1.5392, 0.1344)
    np.testing.assert_allclose(expand_queries(QE_Q, QE_DB, first, 2, alpha=3), expected, rtol=1e-6)
    # cos with q' = (.99621, .08699): d0 .84916, d1 .52813, d2 .36245, d3 -.08699, d4 -.99621
    out = alpha_query_expansion(QE_Q, QE_DB, first, 2, alpha=3, device="cpu")
    assert out.tolist() == [[0, 1, 2, 3, 4]]
    # negative and zero cosines weigh 0: neighbours d4 (cos -1) and d3 (cos 0) add nothing
    np.testing.assert_allclose(
        expand_queries(QE_Q, QE_DB, np.array([[4, 3, 0]]), 3, alpha=3),
        l2_normalize(np.array([[1 + 0.512 * 0.8, 0.512 * 0.6]])),
        rtol=1e-6,
    )
    # alpha=0 weighs every neighbour 1, i.e. AQE
    np.testing.assert_allclose(
        expand_queries(QE_Q, QE_DB, first, 2, alpha=0), expand_queries(QE_Q, QE_DB, first, 2), rtol=1e-6
    )


def test_query_expansion_checks_ranking():
    with pytest.raises(TransferlabError, match="neighbours"):
        expand_queries(QE_Q, QE_DB, np.array([[0]]), 2)
    with pytest.raises(TransferlabError, match="outside"):
        expand_queries(QE_Q, QE_DB, np.array([[7, 0]]), 2)
    with pytest.raises(TransferlabError, match="alpha"):
        expand_queries(QE_Q, QE_DB, np.array([[0, 1]]), 2, alpha=-1)


# ----------------------------------------------------------------------------- DBA

# d0=(1,0), d1=(.8,.6), d2=(0,1), d3=(1,0) (duplicate of d0)
# cosines: d0-d1 .8, d0-d2 0, d0-d3 1, d1-d2 .6, d1-d3 .8, d2-d3 0
DBA_DB = np.array([[1, 0], [0.8, 0.6], [0, 1], [1, 0]], dtype=np.float32)


def test_database_augmentation_by_hand():
    out = database_augmentation(DBA_DB, 2, device="cpu")
    # d0: itself + nearest other d3 -> (2,0) -> (1,0)
    # d1: others d0 and d3 tie at .8 -> d0 -> (1.8,.6)/sqrt(3.6)
    # d2: nearest other d1 (.6) -> (.8,1.6)/sqrt(3.2)
    # d3: its top-2 is [d0, d3] (tie at 1, lower index first); self dropped -> d0 -> (1,0)
    expected = [
        [1, 0],
        [1.8 / math.sqrt(3.6), 0.6 / math.sqrt(3.6)],
        [0.8 / math.sqrt(3.2), 1.6 / math.sqrt(3.2)],
        [1, 0],
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(database_augmentation(DBA_DB, 2, chunk_size=1, device="cpu"), out)
    # k=1 only normalises
    np.testing.assert_allclose(database_augmentation(DBA_DB * 2, 1, device="cpu"), DBA_DB)


def test_alpha_database_augmentation_by_hand():
    out = database_augmentation(DBA_DB, 3, alpha=3, device="cpu")
    # d1: + .512*d0 + .512*d3 = (1.824, .6)
    # d2: others d1 (.6 -> .216) then d0 (0 -> weight 0) = (0,1) + .216*(.8,.6) = (.1728, 1.1296)
    np.testing.assert_allclose(out[1], l2_normalize(np.array([1.824, 0.6])), rtol=1e-6)
    np.testing.assert_allclose(out[2], l2_normalize(np.array([0.1728, 1.1296])), rtol=1e-6)
    # k beyond the database is clamped to all of it
    np.testing.assert_allclose(
        database_augmentation(DBA_DB, 99, device="cpu"), database_augmentation(DBA_DB, 4, device="cpu")
    )


# ----------------------------------------------------------------------------- pipeline


class _Scale:
    """A stand-in whitening with a known effect: the pipeline must call transform on both sides."""

    def __init__(self, factors):
        self.factors = np.asarray(factors, dtype=np.float32)

    def transform(self, x):
        return np.asarray(x, dtype=np.float32) * self.factors


def test_retrieve_composes_steps_in_order():
    first = rank(QE_Q, QE_DB, device="cpu")
    assert retrieve(QE_Q, QE_DB, device="cpu").tolist() == first.tolist()
    assert retrieve(QE_Q, QE_DB, qe=1, device="cpu").tolist() == [[0, 2, 1, 3, 4]]
    assert (
        retrieve(QE_Q, QE_DB, qe=2, alpha=3, device="cpu").tolist()
        == alpha_query_expansion(QE_Q, QE_DB, first, 2, alpha=3, device="cpu").tolist()
    )
    # Whitening (here: y scaled by .1) applies to both sides before normalisation. Angles:
    # q=(.6,1) 59.0 deg; d0 36.9, d1 -53.1, d2 73.7, d3 -90, d4 180 -> unwhitened [2, 0, 1, 4, 3].
    # Whitened: q 9.5; d0 4.3, d1 -7.6, d2 18.9, d3 -90, d4 180 -> [0, 2, 1, 3, 4]
    # (whitening only the queries would give [0, 1, 2, 3, 4], only the database [2, 0, 1, 4, 3]).
    q = np.array([[0.6, 1]], np.float32)
    assert retrieve(q, QE_DB, device="cpu").tolist() == [[2, 0, 1, 4, 3]]
    assert retrieve(q, QE_DB, postprocess=_Scale([1, 0.1]), device="cpu").tolist() == [[0, 2, 1, 3, 4]]
    # DBA then rank: same as ranking the augmented database
    aug = database_augmentation(l2_normalize(DBA_DB), 2, device="cpu")
    q = np.array([[0.6, 0.8]], np.float32)
    assert retrieve(q, DBA_DB, dba=2, device="cpu").tolist() == rank(q, aug, device="cpu").tolist()
    assert retrieve(q, DBA_DB, dba=2, top_k=2, device="cpu").shape == (1, 2)


def test_fit_whitening_uses_pca_when_available():
    postprocess = pytest.importorskip("transferlab.features.postprocess")
    from transferlab.heads.retrieval import fit_whitening

    rng = np.random.default_rng(3)
    held_out = rng.standard_normal((200, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    pca = fit_whitening(held_out, 4)
    assert isinstance(pca, postprocess.PCA)
    white = np.asarray(pca.transform(held_out))
    assert white.shape == (200, 4)
    # whitened held-out data has (close to) identity covariance
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(4), atol=0.05)
    db = rng.standard_normal((30, 8)).astype(np.float32)
    assert retrieve(db[:3], db, postprocess=pca, device="cpu")[:, 0].tolist() == [0, 1, 2]


def test_rankings_score_with_the_task_protocol():
    evaluate = pytest.importorskip("transferlab.evaluate")
    from transferlab.data.base import Query

    # QE example, positives d0 and d2. Oxford AP (trapezoids, 1/2 per positive):
    # plain ranking [0,1,2,..]: positives at ranks 0 and 2 -> (1+1)/2/2 + (1/2+2/3)/2/2 = .791667
    # AQE k=1 ranking [0,2,1,..]: ranks 0 and 1 -> 1.0
    queries = [Query(path="q.jpg", positives=np.array([0, 2]))]
    plain = retrieve(QE_Q, QE_DB, device="cpu")
    expanded = retrieve(QE_Q, QE_DB, qe=1, device="cpu")
    before = evaluate.evaluate_retrieval("oxford_map", plain, queries, len(QE_DB))["oxford_map"]
    after = evaluate.evaluate_retrieval("oxford_map", expanded, queries, len(QE_DB))["oxford_map"]
    assert before == pytest.approx(19 / 24)
    assert after == pytest.approx(1.0)


# ----------------------------------------------------------------------------- spatial search

# Queries: Q0 windows (0,0),(3,4); Q1 windows (1,0),(0,0).
# Images:  I0 (0,0),(6,8),(10,0); I1 (3,0),(0,4),(5,5); I2 (0,3),(3,4),(6,0).
SQ = np.array([[[0, 0], [3, 4]], [[1, 0], [0, 0]]], dtype=np.float32)
SD = np.array(
    [[[0, 0], [6, 8], [10, 0]], [[3, 0], [0, 4], [5, 5]], [[0, 3], [3, 4], [6, 0]]], dtype=np.float32
)


def test_spatial_search_by_hand():
    # Q0-I0: (0,0)->0; (3,4)->min(5, 5, sqrt65)=5            -> 2.5
    # Q0-I1: (0,0)->min(3,4,sqrt50)=3; (3,4)->min(4,3,sqrt5)  -> (3+sqrt5)/2
    # Q0-I2: (0,0)->min(3,5,6)=3; (3,4)->0                    -> 1.5
    # Q1-I0: (1,0)->min(1,sqrt89,9)=1; (0,0)->0               -> 0.5
    # Q1-I1: (1,0)->min(2,sqrt17,sqrt41)=2; (0,0)->3          -> 2.5
    # Q1-I2: (1,0)->min(sqrt10,sqrt20,5); (0,0)->3            -> (3+sqrt10)/2
    expected = [[2.5, (3 + math.sqrt(5)) / 2, 1.5], [0.5, 2.5, (3 + math.sqrt(10)) / 2]]
    dist = spatial_search_distances(SQ, SD, device="cpu")
    np.testing.assert_allclose(dist, expected, rtol=1e-6)
    assert spatial_search_rank(SQ, SD, device="cpu").tolist() == [[2, 0, 1], [0, 1, 2]]
    assert spatial_search_rank(SQ, SD, top_k=1, device="cpu").tolist() == [[2], [0]]
    for chunk in (1, 2, 3, 10):
        np.testing.assert_allclose(spatial_search_distances(SQ, SD, chunk=chunk, device="cpu"), dist)


def test_spatial_search_masks():
    db_mask = np.ones((3, 3), dtype=bool)
    db_mask[2, 1] = False  # drop I2's (3,4)
    dist = spatial_search_distances(SQ, SD, db_mask=db_mask, device="cpu")
    # Q0-I2: (0,0)->3; (3,4)->min(sqrt10, 5) -> (3+sqrt10)/2; Q1-I2 unchanged
    np.testing.assert_allclose(dist[:, 2], [(3 + math.sqrt(10)) / 2] * 2, rtol=1e-6)
    np.testing.assert_allclose(dist[:, :2], spatial_search_distances(SQ, SD, device="cpu")[:, :2])
    q_mask = np.array([[True, True], [True, False]])  # Q1 keeps only (1,0)
    dist = spatial_search_distances(SQ, SD, q_mask=q_mask, device="cpu")
    np.testing.assert_allclose(dist[1], [1, 2, math.sqrt(10)], rtol=1e-6)
    # an image without any valid window is infinitely far and ranks last
    db_mask = np.ones((3, 3), dtype=bool)
    db_mask[0] = False
    dist = spatial_search_distances(SQ, SD, db_mask=db_mask, device="cpu")
    assert np.isinf(dist[:, 0]).all()
    assert spatial_search_rank(SQ, SD, db_mask=db_mask, device="cpu").tolist() == [[2, 1, 0], [1, 2, 0]]
    with pytest.raises(TransferlabError, match="no valid window"):
        spatial_search_distances(SQ, SD, q_mask=np.array([[True, True], [False, False]]))
    with pytest.raises(TransferlabError, match="shape"):
        spatial_search_distances(SQ, SD, db_mask=np.ones((3, 2), dtype=bool))


def test_spatial_search_chunked_equals_direct_reference():
    rng = np.random.default_rng(4)
    qw = rng.standard_normal((5, 4, 8)).astype(np.float32)
    dw = rng.standard_normal((23, 6, 8)).astype(np.float32)
    q_mask = rng.random((5, 4)) > 0.3
    q_mask[:, 0] = True
    db_mask = rng.random((23, 6)) > 0.3
    # brute force: explicit differences, float64
    pair = np.sqrt(((qw[:, :, None, None, :] - dw[None, None, :, :, :]) ** 2).sum(-1).astype(np.float64))
    pair = np.where(db_mask[None, None], pair, np.inf).min(axis=3)  # (q, Rq, images)
    ref = np.where(q_mask[:, :, None], pair, 0).sum(1) / q_mask.sum(1)[:, None]
    ref[:, ~db_mask.any(1)] = np.inf
    for chunk in (None, 1, 4, 7, 23, 50):
        out = spatial_search_distances(qw, dw, q_mask, db_mask, chunk=chunk, device="cpu")
        np.testing.assert_allclose(out, ref, rtol=1e-5)
    np.testing.assert_array_equal(
        spatial_search_rank(qw, dw, q_mask, db_mask, chunk=3, device="cpu"),
        np.argsort(ref, axis=1, kind="stable"),
    )


def test_rank_by_distance_ties_and_top_k():
    dist = np.array([[2.0, 1.0, 1.0, np.inf, 0.5]])
    assert rank_by_distance(dist).tolist() == [[4, 1, 2, 0, 3]]
    assert rank_by_distance(dist, top_k=2).tolist() == [[4, 1]]


def test_spatial_retrieve_normalises_windows():
    # Scaling one image's windows changes nothing once each window is L2-normalised.
    rng = np.random.default_rng(5)
    qw = rng.standard_normal((3, 4, 8)).astype(np.float32)
    dw = rng.standard_normal((9, 5, 8)).astype(np.float32)
    scaled = dw * np.linspace(0.5, 20, 9, dtype=np.float32)[:, None, None]
    a = retrieve(qw, dw, spatial=True, device="cpu")
    assert retrieve(qw, scaled, spatial=True, device="cpu").tolist() == a.tolist()
    np.testing.assert_array_equal(
        a, spatial_search_rank(l2_normalize(qw), l2_normalize(dw), device="cpu")
    )
    # the whitening transform is applied to every window, before normalisation
    w = retrieve(qw, dw, spatial=True, postprocess=_Scale(np.arange(1, 9)), device="cpu")
    ref = spatial_search_rank(
        l2_normalize(qw * np.arange(1, 9)), l2_normalize(dw * np.arange(1, 9)), device="cpu"
    )
    assert w.tolist() == ref.tolist() and w.tolist() != a.tolist()


def test_spatial_windows_geometry():
    boxes = spatial_windows((1, 2, 3), overlap=0.5)
    assert boxes.shape == (1 + 4 + 9, 4)
    np.testing.assert_array_equal(boxes[0], [0, 0, 1, 1])
    # level 2: side 2/3, step 1/3
    np.testing.assert_allclose(
        boxes[1:5], [[0, 0, 2 / 3, 2 / 3], [1 / 3, 0, 1, 2 / 3], [0, 1 / 3, 2 / 3, 1], [1 / 3, 1 / 3, 1, 1]]
    )
    # level 3: side 1/2, step 1/4; last window ends at the corner
    np.testing.assert_allclose(boxes[5], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(boxes[13], [0.5, 0.5, 1, 1])
    assert spatial_windows((1, 2, 3, 4)).shape == (30, 4)
    # without overlap, level 2 is the four quadrants; level 1 is added first if absent
    quads = spatial_windows((2,), overlap=0.0)
    np.testing.assert_allclose(
        quads, [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]
    )
    with pytest.raises(TransferlabError):
        spatial_windows((1, 2), overlap=1.0)
    with pytest.raises(TransferlabError):
        spatial_windows((0,))
