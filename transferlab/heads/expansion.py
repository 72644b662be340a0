"""Query expansion (AQE, alpha-QE) and database-side augmentation (DBA, alpha-DBA).

Both replace a vector by a weighted mean of itself and its nearest database vectors, so they
share one implementation (``_weighted_neighbour_means``). Every vector is L2-normalised
first; results are L2-normalised float32. Conventions as in ``heads.ranking``.
"""

from __future__ import annotations

import numpy as np
import torch

from transferlab.device import resolve_device
from transferlab.errors import TransferlabError
from transferlab.features.postprocess import l2_normalize
from transferlab.heads.ranking import (
    BLOCK_ELEMENTS,
    Metric,
    as_array,
    as_pair,
    as_ranking,
    chunk_starts,
    count,
    rank,
)


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
    for s, e in chunk_starts(n, rows):
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


def check_alpha(alpha: float | None) -> float | None:
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
    q, d = as_pair(queries, database)
    k = count(k, "k")
    alpha = check_alpha(alpha)
    if k == 0 or q.shape[0] == 0:
        return l2_normalize(q)
    neighbours = as_ranking(ranking, q.shape[0], d.shape[0], k)
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
    d = as_array(database, "database", 2)
    k = count(k, "k", minimum=1)
    alpha = check_alpha(alpha)
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
