"""Exact ranking of a database for each query: blocked scores, deterministic ties, top-k.

Everything here is exact (no approximate nearest neighbours) and memory-bounded: scores are
computed block by block with matrix products, so a 100k x 100k search never holds the full
score matrix. With ``top_k`` only a running top-k per query is kept; without it the output
(n_queries, n_db) is itself the largest object.

Conventions shared by the retrieval modules (ranking, expansion, spatial, retrieval):

- NumPy in, NumPy out; computation in float32 torch on ``device`` ("auto" = CUDA when
  available, else CPU).
- A ranking is an int64 array (n_queries, n_db) (or (n_queries, top_k)) of database indices,
  best first.
- Ties (equal float32 scores) are broken deterministically: the lower database index comes
  first. Chunk sizes never change a ranking.
- Scores: ``cosine`` = cosine similarity (a zero vector has similarity 0 with everything);
  ``l2`` = negative squared Euclidean distance, computed as |q|^2 + |d|^2 - 2 q.d, clamped at 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from transferlab.device import resolve_device
from transferlab.errors import TransferlabError

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


# ----------------------------------------------------------------------------- validation


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise TransferlabError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")


def positive_int(value: Any, name: str, allow_none: bool = True, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum`` (None passes when ``allow_none``); a one-line error naming it."""
    if value is None and allow_none:
        return None
    return count(value, name, minimum)


def count(value: Any, name: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (a neighbour count, 0 = off); a one-line error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TransferlabError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def as_array(x: Any, name: str, ndim: int) -> np.ndarray:
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


def as_ranking(ranking: Any, n_queries: int, n_db: int, k: int) -> np.ndarray:
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


def as_pair(queries: Any, database: Any) -> tuple[np.ndarray, np.ndarray]:
    q = as_array(queries, "queries", 2)
    d = as_array(database, "database", 2)
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
        sq = row_sq_norms(self.db, "database")
        self.db_norm = sq.sqrt().clamp_min(torch.finfo(torch.float32).tiny)
        self.db_sq = sq

    def prepare_queries(self, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.from_numpy(queries).to(self.device)
        sq = row_sq_norms(q, "queries")
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


def row_sq_norms(x: torch.Tensor, name: str) -> torch.Tensor:
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


def chunk_starts(n: int, size: int) -> Iterator[tuple[int, int]]:
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
    check_metric(metric)
    q, d = as_pair(queries, database)
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
    check_metric(metric)
    q, d = as_pair(queries, database)
    chunk = positive_int(chunk_size, "chunk_size")
    q_chunk = positive_int(query_chunk_size, "query_chunk_size")
    k = positive_int(top_k, "top_k")
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
    for qs, qe in chunk_starts(n_q, q_chunk):
        qt, qsq = scorer.prepare_queries(q[qs:qe])
        scores = torch.empty((qe - qs, n_db), dtype=torch.float32, device=scorer.device)
        for ds, de in chunk_starts(n_db, chunk):
            scores[:, ds:de] = scorer.block(qt, qsq, ds, de)
        # A stable descending sort keeps equal scores in index order: lower index first.
        out[qs:qe] = torch.sort(scores, dim=1, descending=True, stable=True).indices.cpu().numpy()
    return out


def _rank_topk(scorer: _Scorer, q: np.ndarray, k: int, chunk: int, q_chunk: int) -> np.ndarray:
    n_q, n_db = q.shape[0], scorer.db.shape[0]
    out = np.empty((n_q, k), dtype=np.int64)
    for qs, qe in chunk_starts(n_q, q_chunk):
        qt, qsq = scorer.prepare_queries(q[qs:qe])
        running: torch.Tensor | None = None
        for ds, de in chunk_starts(n_db, chunk):
            block = scorer.block(qt, qsq, ds, de)
            running = _merge_topk(running, _topk_block(block, ds, k), k)
        assert running is not None
        ordered = torch.sort(running, dim=1, descending=True).values
        out[qs:qe] = _key_indices(ordered).cpu().numpy()
    return out
