"""Instance retrieval on descriptor arrays: exact ranking, query expansion, DBA, spatial search.

Everything here is exact (no approximate nearest neighbours) and memory-bounded: scores are
computed block by block with matrix products, so a 100k x 100k search never holds the full
score matrix. With ``top_k`` only a running top-k per query is kept; without it the output
(n_queries, n_db) is itself the largest object.

Conventions shared by every function:

- NumPy in, NumPy out; computation in float32 torch on ``device`` ("auto" = CUDA when
  available, else CPU).
- A ranking is an int64 array (n_queries, n_db) (or (n_queries, top_k)) of database indices,
  best first.
- Ties (equal float32 scores) are broken deterministically: the lower database index comes
  first. Chunk sizes never change a ranking.
- Scores: ``cosine`` = cosine similarity (a zero vector has similarity 0 with everything);
  ``l2`` = negative squared Euclidean distance, computed as |q|^2 + |d|^2 - 2 q.d, clamped at 0.

The standard pipeline (``retrieve``) is: PCA-whitening (fit on a held-out dataset) -> L2
normalisation -> database-side augmentation -> ranking -> query expansion (AQE / alpha-QE).
The spatial search of Razavian et al. (arXiv 1412.6574) works on per-image sub-window
descriptors; see ``spatial_search_distances``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np
import torch

from transferlab.device import resolve_device
from transferlab.errors import TransferlabError
from transferlab.features.pooling import spatial_windows  # noqa: F401 - the geometry's owner; part of this API

Metric = Literal["cosine", "l2"]
METRICS = ("cosine", "l2")

# Default block sizes: one (queries x database) score block holds at most about 2**23 floats
# (32 MiB), so a laptop never needs more than a few hundred MiB whatever the dataset size.
BLOCK_ELEMENTS = 2**23
DEFAULT_QUERY_CHUNK = 1024
DEFAULT_DB_CHUNK = 4096
# Squared norms above this could overflow float32 inside |q|^2 + |d|^2 - 2 q.d.
_MAX_SQ_NORM = 1e37

_LOW32 = 2**32 - 1
_HIGH = 2**32


class Transform(Protocol):
    """What ``retrieve`` needs from a whitening: a fitted ``transform`` (e.g. features.postprocess.PCA)."""

    def transform(self, x: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------- validation


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise TransferlabError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")


def _positive_int(value: Any, name: str, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TransferlabError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """float32, C-contiguous, finite, of the given rank; a clear error otherwise."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise TransferlabError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise TransferlabError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise TransferlabError(f"{name} holds a non-finite value at index {tuple(int(i) for i in bad)}")
    return arr


def _as_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise TransferlabError(f"{name} must have shape {shape}, got {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise TransferlabError(f"{name} must be boolean (True = valid window)")
        arr = arr.astype(bool)
    return arr


def _as_ranking(ranking: Any, n_queries: int, n_db: int, k: int) -> np.ndarray:
    arr = np.asarray(ranking)
    if arr.ndim != 2 or arr.shape[0] != n_queries:
        raise TransferlabError(f"ranking must have shape ({n_queries}, >= {k}), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TransferlabError(f"ranking must hold integer database indices, got dtype {arr.dtype}")
    if arr.shape[1] < k:
        raise TransferlabError(f"ranking holds {arr.shape[1]} neighbours per query; {k} are needed")
    head = arr[:, :k].astype(np.int64)
    if head.size and (head.min() < 0 or head.max() >= n_db):
        raise TransferlabError(f"ranking holds indices outside the database [0, {n_db})")
    return head


def _pair(queries: Any, database: Any) -> tuple[np.ndarray, np.ndarray]:
    q = _as_array(queries, "queries", 2)
    d = _as_array(database, "database", 2)
    if q.shape[1] != d.shape[1]:
        raise TransferlabError(
            f"queries have {q.shape[1]} dimensions but database vectors have {d.shape[1]}"
        )
    return q, d


# ----------------------------------------------------------------------------- scoring


class _Scorer:
    """Scores (higher = better) of query blocks against database blocks, database kept as given.

    Database norms are computed once; database vectors are never copied on the CPU (cosine
    divides each score by |d| instead of normalising the database).
    """

    def __init__(self, database: np.ndarray, metric: str, device: torch.device):
        self.metric = metric
        self.device = device
        self.db = torch.from_numpy(database).to(device)
        sq = _row_sq_norms(self.db, "database")
        self.db_norm = sq.sqrt().clamp_min(torch.finfo(torch.float32).tiny)
        self.db_sq = sq

    def prepare_queries(self, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.from_numpy(queries).to(self.device)
        sq = _row_sq_norms(q, "queries")
        if self.metric == "cosine":
            q = q / sq.sqrt().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        return q, sq

    def block(self, q: torch.Tensor, q_sq: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(n_q, stop - start) float32 scores; -0.0 made +0.0 so equal scores have equal bits."""
        if self.metric == "cosine":
            scores = (q @ self.db[start:stop].T).div_(self.db_norm[start:stop])
        else:
            partial = torch.addmm(self.db_sq[None, start:stop], q, self.db[start:stop].T, alpha=-2.0)
            scores = partial.add_(q_sq[:, None]).clamp_min_(0.0).neg_()
        return scores.add_(0.0)


def _row_sq_norms(x: torch.Tensor, name: str) -> torch.Tensor:
    sq = (x * x).sum(dim=1) if x.shape[0] else x.new_zeros(0)
    if sq.numel() and not bool((sq <= _MAX_SQ_NORM).all()):
        row = int(torch.nonzero(~(sq <= _MAX_SQ_NORM))[0, 0])
        raise TransferlabError(
            f"{name} row {row} has a squared norm above {_MAX_SQ_NORM:g}; float32 scores would "
            "overflow (normalise or rescale the features)"
        )
    return sq


def _order_keys(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered by (score descending, index ascending), all distinct.

    High 32 bits: the float32 score's bits mapped to an order-preserving integer; low 32 bits:
    2**32 - 1 - index. So one integer top-k gives the exact, tie-broken top-k.
    """
    bits = scores.contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits * _HIGH + (_LOW32 - indices)


def _key_indices(keys: torch.Tensor) -> torch.Tensor:
    return _LOW32 - (keys & _LOW32)


def _chunk_starts(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _topk_block(scores: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Keys of the exact, tie-broken top-k of a score block whose first column is index ``start``.

    A float top-(k+1) finds the candidates quickly; only rows where the k-th and (k+1)-th
    scores are equal (a tie straddling the cut) are redone with full integer keys.
    """
    n_rows, width = scores.shape
    cols = torch.arange(start, start + width, device=scores.device)
    if width <= k:
        return _order_keys(scores, cols.expand(n_rows, width))
    vals, idx = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    keys = _order_keys(vals[:, :k], idx[:, :k] + start)
    tied = torch.nonzero(vals[:, k - 1] == vals[:, k]).flatten()
    if tied.numel():
        full = _order_keys(scores[tied], cols.expand(tied.numel(), width))
        keys[tied] = torch.topk(full, k, dim=1, sorted=False).values
    return keys


def _merge_topk(running: torch.Tensor | None, new: torch.Tensor, k: int) -> torch.Tensor:
    if running is None:
        merged = new
    else:
        merged = torch.cat([running, new], dim=1)
    if merged.shape[1] <= k:
        return merged
    return torch.topk(merged, k, dim=1, sorted=False).values


# ----------------------------------------------------------------------------- ranking


def similarities(
    queries: np.ndarray, database: np.ndarray, metric: Metric = "cosine", device: str | torch.device = "auto"
) -> np.ndarray:
    """(n_q, n_db) float32 scores, higher = more similar (cosine, or -squared L2 distance).

    The full matrix: for large sets use ``rank`` (blocked) instead.
    """
    _check_metric(metric)
    q, d = _pair(queries, database)
    scorer = _Scorer(d, metric, resolve_device(device))
    qt, qsq = scorer.prepare_queries(q)
    return scorer.block(qt, qsq, 0, d.shape[0]).cpu().numpy()


def rank(
    queries: np.ndarray,
    database: np.ndarray,
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    top_k: int | None = None,
    device: str | torch.device = "auto",
    query_chunk_size: int | None = None,
) -> np.ndarray:
    """Exact ranking of ``database`` for each query: int64 (n_q, n_db), or (n_q, top_k), best first.

    ``chunk_size`` database vectors and ``query_chunk_size`` queries are scored per block
    (defaults keep a block near 2**23 floats). With ``top_k`` a running top-k is merged block by
    block, so memory is O(n_q_chunk x (chunk_size + top_k)) whatever n_db; ``top_k`` larger than
    n_db gives all n_db. Ties: lower database index first, identical for every chunking.
    """
    _check_metric(metric)
    q, d = _pair(queries, database)
    chunk = _positive_int(chunk_size, "chunk_size")
    q_chunk = _positive_int(query_chunk_size, "query_chunk_size")
    k = _positive_int(top_k, "top_k")
    n_q, n_db = q.shape[0], d.shape[0]
    width = n_db if k is None else min(k, n_db)
    if n_q == 0 or n_db == 0:
        return np.zeros((n_q, width), dtype=np.int64)
    scorer = _Scorer(d, metric, resolve_device(device))
    if k is None:
        return _rank_full(scorer, q, chunk or DEFAULT_DB_CHUNK, q_chunk)
    return _rank_topk(scorer, q, width, chunk or DEFAULT_DB_CHUNK, q_chunk or DEFAULT_QUERY_CHUNK)


def _rank_full(scorer: _Scorer, q: np.ndarray, chunk: int, q_chunk: int | None) -> np.ndarray:
    n_q, n_db = q.shape[0], scorer.db.shape[0]
    q_chunk = q_chunk or max(1, min(n_q, BLOCK_ELEMENTS // n_db))
    out = np.empty((n_q, n_db), dtype=np.int64)
    for qs, qe in _chunk_starts(n_q, q_chunk):
        qt, qsq = scorer.prepare_queries(q[qs:qe])
        scores = torch.empty((qe - qs, n_db), dtype=torch.float32, device=scorer.device)
        for ds, de in _chunk_starts(n_db, chunk):
            scores[:, ds:de] = scorer.block(qt, qsq, ds, de)
        # A stable descending sort keeps equal scores in index order: lower index first.
        out[qs:qe] = torch.sort(scores, dim=1, descending=True, stable=True).indices.cpu().numpy()
    return out


def _rank_topk(scorer: _Scorer, q: np.ndarray, k: int, chunk: int, q_chunk: int) -> np.ndarray:
    n_q, n_db = q.shape[0], scorer.db.shape[0]
    out = np.empty((n_q, k), dtype=np.int64)
    for qs, qe in _chunk_starts(n_q, q_chunk):
        qt, qsq = scorer.prepare_queries(q[qs:qe])
        running: torch.Tensor | None = None
        for ds, de in _chunk_starts(n_db, chunk):
            block = scorer.block(qt, qsq, ds, de)
            running = _merge_topk(running, _topk_block(block, ds, k), k)
        assert running is not None
        ordered = torch.sort(running, dim=1, descending=True).values
        out[qs:qe] = _key_indices(ordered).cpu().numpy()
    return out


# ----------------------------------------------------------------------------- expansion


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    arr = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return arr / np.maximum(norms, np.finfo(np.float32).tiny)


def _weighted_neighbour_means(
    anchors: np.ndarray,
    database: np.ndarray,
    neighbours: np.ndarray,
    alpha: float | None,
    include_anchor: bool,
    device: torch.device,
) -> np.ndarray:
    """normalise(w0 * anchor + sum_i w_i db[neighbours_i]) with w = max(cos, 0) ** alpha (1 if None).

    Vectors are L2-normalised first; the anchor's own weight is 1 (its cosine with itself).
    Done in blocks of anchors so the gathered (block, k, D) tensor stays small.
    """
    a_all = l2_normalize(anchors)
    db = torch.from_numpy(l2_normalize(database)).to(device)
    n, k = neighbours.shape
    dim = database.shape[1]
    rows = max(1, BLOCK_ELEMENTS // max(1, (k + 1) * dim))
    out = np.empty_like(a_all)
    for s, e in _chunk_starts(n, rows):
        a = torch.from_numpy(a_all[s:e]).to(device)
        nb = db[torch.from_numpy(neighbours[s:e]).to(device)]  # (b, k, D)
        if alpha is None:
            w = torch.ones(nb.shape[:2], dtype=torch.float32, device=device)
        else:
            cos = torch.einsum("bd,bkd->bk", a, nb)
            w = cos.clamp_min(0.0).pow(alpha)
        total = torch.einsum("bk,bkd->bd", w, nb)
        if include_anchor:
            total = total + a
        norms = total.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        out[s:e] = (total / norms).cpu().numpy()
    return out


def _check_alpha(alpha: float | None) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TransferlabError(f"alpha must be a number >= 0 or None, not {alpha!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise TransferlabError(f"alpha must be a number >= 0 or None, not {alpha!r}")
    return float(alpha)


def expand_queries(
    queries: np.ndarray,
    database: np.ndarray,
    ranking: np.ndarray,
    k: int,
    alpha: float | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Expanded query vectors (n_q, D), L2-normalised.

    alpha None (AQE, Chum et al. 2007): mean of the query and its top-k database vectors.
    alpha a number (alpha-QE, Radenovic et al. 2018): the query (weight 1) plus each top-k
    vector weighted by max(cos(q, d), 0) ** alpha. All vectors are L2-normalised first.
    """
    q, d = _pair(queries, database)
    k = _positive_int(k, "k", allow_none=False, minimum=0)
    alpha = _check_alpha(alpha)
    if k == 0 or q.shape[0] == 0:
        return l2_normalize(q)
    neighbours = _as_ranking(ranking, q.shape[0], d.shape[0], k)
    return _weighted_neighbour_means(q, d, neighbours, alpha, True, resolve_device(device))


def average_query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    ranking: np.ndarray,
    k: int,
    *,
    metric: Metric = "cosine",
    top_k: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """AQE: re-rank with mean(query, its top-k database vectors), re-normalised."""
    expanded = expand_queries(queries, database, ranking, k, None, device)
    return rank(expanded, database, metric=metric, top_k=top_k, device=device)


def alpha_query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    ranking: np.ndarray,
    k: int,
    alpha: float = 3.0,
    *,
    metric: Metric = "cosine",
    top_k: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """alpha-QE: re-rank with query + sum_i max(cos, 0)**alpha * d_i over its top-k, re-normalised."""
    if alpha is None:
        raise TransferlabError("alpha_query_expansion needs a number alpha (use AQE for none)")
    expanded = expand_queries(queries, database, ranking, k, alpha, device)
    return rank(expanded, database, metric=metric, top_k=top_k, device=device)


def database_augmentation(
    database: np.ndarray,
    k: int,
    alpha: float | None = None,
    *,
    chunk_size: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """DBA: each database vector replaced by the weighted mean of its top-k neighbours, itself included.

    The neighbour set is the vector itself plus its k-1 nearest other database vectors
    (cosine; ties to the lower index), so k=1 only re-normalises. Weights are 1 (alpha None)
    or max(cos, 0) ** alpha (alpha-DBA; the vector's own weight is 1). k above n_db is
    clamped. Returns L2-normalised float32 (n_db, D); the k-NN search is blocked.
    """
    d = _as_array(database, "database", 2)
    k = _positive_int(k, "k", allow_none=False)
    alpha = _check_alpha(alpha)
    n = d.shape[0]
    k = min(k, n)
    if k <= 1:
        return l2_normalize(d)
    dev = resolve_device(device)
    nearest = rank(d, d, "cosine", chunk_size=chunk_size, top_k=k, device=dev)
    others = _drop_self(nearest, k - 1)
    return _weighted_neighbour_means(d, d, others, alpha, True, dev)


def _drop_self(nearest: np.ndarray, keep: int) -> np.ndarray:
    """Per row, the first ``keep`` neighbours that are not the row's own index (order kept)."""
    own = np.arange(nearest.shape[0])[:, None]
    is_self = nearest == own
    # Stable sort on the flag moves the row's own index (if present) behind the others.
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(nearest, order, axis=1)[:, :keep]


# ----------------------------------------------------------------------------- pipeline


def fit_whitening(held_out: np.ndarray, dim: int) -> Any:
    """PCA-whitening to ``dim`` dims, learned on a held-out dataset (e.g. Paris for Oxford)."""
    from transferlab.features.postprocess import PCA

    pca = PCA(dim, whiten=True)
    pca.fit(_as_array(held_out, "held_out", 2))
    return pca


def _transform(whiten: Transform, x: np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(whiten.transform(x))
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise TransferlabError(f"whitening turned {name} {x.shape} into {out.shape}")
    return _as_array(out, f"whitened {name}", 2)


def retrieve(
    query_feats: np.ndarray,
    db_feats: np.ndarray,
    *,
    whiten: Transform | None = None,
    qe: int = 0,
    alpha: float | None = None,
    dba: int = 0,
    metric: Metric = "cosine",
    top_k: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Ranking (n_q, n_db or top_k) by the standard order: whiten -> L2 -> DBA -> rank -> QE.

    ``whiten``: a fitted transform (``fit_whitening`` on a held-out set), or None.
    ``dba``: neighbours per database vector, itself included (0 = off).
    ``qe``: database vectors added to each query (0 = off); ``alpha`` None gives AQE / plain
    DBA, a number gives alpha-QE / alpha-DBA.
    """
    _check_metric(metric)
    q, d = _pair(query_feats, db_feats)
    qe = _positive_int(qe, "qe", allow_none=False, minimum=0)
    dba = _positive_int(dba, "dba", allow_none=False, minimum=0)
    alpha = _check_alpha(alpha)
    dev = resolve_device(device)
    if whiten is not None:
        q, d = _transform(whiten, q, "queries"), _transform(whiten, d, "database")
    q, d = l2_normalize(q), l2_normalize(d)
    if dba:
        d = database_augmentation(d, dba, alpha, device=dev)
    if qe and d.shape[0]:
        first = rank(q, d, metric, top_k=min(qe, d.shape[0]), device=dev)
        q = expand_queries(q, d, first, min(qe, d.shape[0]), alpha, dev)
    return rank(q, d, metric, top_k=top_k, device=dev)


# ----------------------------------------------------------------------------- spatial search


def _windows_pair(
    query_windows: Any, db_windows: Any, q_mask: Any, db_mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    qw = _as_array(query_windows, "query_windows", 3)
    dw = _as_array(db_windows, "db_windows", 3)
    if qw.shape[2] != dw.shape[2]:
        raise TransferlabError(
            f"query windows have {qw.shape[2]} dimensions but database windows have {dw.shape[2]}"
        )
    qm = _as_mask(q_mask, qw.shape[:2], "q_mask")
    dm = _as_mask(db_mask, dw.shape[:2], "db_mask")
    qm = np.ones(qw.shape[:2], dtype=bool) if qm is None else qm
    dm = np.ones(dw.shape[:2], dtype=bool) if dm is None else dm
    empty = np.flatnonzero(~qm.any(axis=1))
    if empty.size:
        raise TransferlabError(f"query {int(empty[0])} has no valid window in q_mask")
    return qw, dw, qm, dm


def spatial_search_distances(
    query_windows: np.ndarray,
    db_windows: np.ndarray,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    chunk: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Query-to-image distances (n_q, n_db), float32, of Razavian et al.'s spatial search.

    query_windows (n_q, Rq, D), db_windows (n_db, Rd, D): one descriptor per sub-window (pass
    them post-processed, e.g. L2-normalised). Distance(query, image) = mean over the query's
    valid windows of the minimum Euclidean (not squared) distance to the image's valid
    windows. Masks (True = valid) are optional; an image with no valid window is at +inf.
    ``chunk`` images are processed per block (default: a block of about 2**23 floats), so
    Oxford5k-sized sets run on a laptop.
    """
    qw, dw, qm, dm = _windows_pair(query_windows, db_windows, q_mask, db_mask)
    chunk = _positive_int(chunk, "chunk")
    n_q, r_q, dim = qw.shape
    n_db, r_d, _ = dw.shape
    out = np.empty((n_q, n_db), dtype=np.float32)
    if n_q == 0 or n_db == 0:
        return out
    dev = resolve_device(device)
    q_rows = max(1, min(n_q, 4096 // r_q))  # queries per block: at most ~4096 window rows
    chunk = chunk or max(1, BLOCK_ELEMENTS // (q_rows * r_q * r_d))
    db = torch.from_numpy(dw.reshape(n_db * r_d, dim)).to(dev)
    # |d|^2 with invalid windows at +inf: they can never be the minimum, at no extra pass.
    db_sq = _row_sq_norms(db, "db_windows")
    db_sq = torch.where(torch.from_numpy(dm.reshape(-1)).to(dev), db_sq, float("inf"))
    for qs, qe in _chunk_starts(n_q, q_rows):
        q = torch.from_numpy(qw[qs:qe].reshape(-1, dim)).to(dev)
        q_sq = _row_sq_norms(q, "query_windows").view(qe - qs, r_q, 1)
        q_valid = torch.from_numpy(qm[qs:qe]).to(dev)[:, :, None]
        n_valid = q_valid.sum(dim=1).to(torch.float32)
        for ds, de in _chunk_starts(n_db, chunk):
            a, b = ds * r_d, de * r_d
            # min over an image's windows of |d|^2 - 2 q.d, then + |q|^2: squared distance
            partial = torch.addmm(db_sq[None, a:b], q, db[a:b].T, alpha=-2.0)
            nearest = partial.view(qe - qs, r_q, de - ds, r_d).amin(dim=3)
            nearest = nearest.add_(q_sq).clamp_min_(0.0).sqrt_()  # (queries, Rq, images)
            nearest = torch.where(q_valid, nearest, torch.zeros((), device=dev))
            out[qs:qe, ds:de] = (nearest.sum(dim=1) / n_valid).cpu().numpy()
    return out


def rank_by_distance(distances: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Ranking (n_q, n_db or top_k) by ascending distance, ties to the lower index."""
    dist = np.asarray(distances, dtype=np.float32)
    if dist.ndim != 2 or np.isnan(dist).any():
        raise TransferlabError(f"distances must be a 2-D array without NaN, got shape {dist.shape}")
    k = _positive_int(top_k, "top_k")
    order = np.argsort(dist + np.float32(0.0), axis=1, kind="stable")
    return order[:, :k] if k is not None else order


def spatial_search_rank(
    query_windows: np.ndarray,
    db_windows: np.ndarray,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    chunk: int | None = None,
    top_k: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Ranking by ``spatial_search_distances`` (smallest first; ties to the lower index)."""
    distances = spatial_search_distances(query_windows, db_windows, q_mask, db_mask, chunk, device)
    return rank_by_distance(distances, top_k)


def retrieve_spatial(
    query_windows: np.ndarray,
    db_windows: np.ndarray,
    *,
    whiten: Transform | None = None,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    top_k: int | None = None,
    chunk: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Spatial search with the usual post-processing per window: whiten -> L2 -> search."""
    qw, dw, _, _ = _windows_pair(query_windows, db_windows, q_mask, db_mask)
    if whiten is not None:
        dim_q, dim_d = qw.shape, dw.shape
        qw = _transform(whiten, qw.reshape(-1, dim_q[2]), "query windows").reshape(*dim_q[:2], -1)
        dw = _transform(whiten, dw.reshape(-1, dim_d[2]), "database windows").reshape(*dim_d[:2], -1)
    return spatial_search_rank(
        l2_normalize(qw), l2_normalize(dw), q_mask, db_mask, chunk=chunk, top_k=top_k, device=device
    )
